"""User-facing errors: one clear line, a non-zero exit code, never a traceback."""


class HeteroQwenError(Exception):
    """An error the user can act on. The CLI prints `error: <message>` and exits with `exit_code`."""

    exit_code = 2

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class CheckpointError(HeteroQwenError):
    """The checkpoint directory is missing, truncated, or does not match its config."""


class ConfigError(HeteroQwenError):
    """config.json describes something we cannot run."""


class ProfileError(HeteroQwenError):
    """The memory-budget YAML profile is malformed or names something unknown."""


class PlanError(HeteroQwenError):
    """No placement satisfies the budgets."""


class InputError(HeteroQwenError):
    """A prompt or argument is out of range (too long for the context, token id out of vocab...)."""


class KernelArgumentError(HeteroQwenError, ValueError):
    """A C++ kernel was called with a tensor of the wrong dtype, shape or layout (kernels/abi.py):
    refused before the kernel touches memory. A ValueError too, like torch's own argument checks."""
