"""hetero-qwen: Qwen3.5/3.6 hybrid models on one consumer GPU plus host RAM."""

__version__ = "0.1.0"


def load(path_or_preset, profile=None, **kwargs):
    """Load a checkpoint directory into an `Engine` (see `hetero_qwen.loader.load`)."""
    from .loader import load as _load
    return _load(path_or_preset, profile=profile, **kwargs)
