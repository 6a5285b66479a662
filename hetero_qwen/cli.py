"""`hetero-qwen` console entry point: a typer app assembled from `hetero_qwen.commands.*`.

Every user-facing failure is a `HeteroQwenError`: printed as one `error: ...` line on stderr with
a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import importlib
import sys

import typer

from .errors import HeteroQwenError

COMMAND_MODULES = ("run", "chat", "serve", "plan", "probe", "tools")  # modules under hetero_qwen.commands, each with register(app)

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Run Qwen3.5/3.6 hybrid models on one GPU plus host RAM.")


def _register_all() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(f"hetero_qwen.commands.{name}").register(app)


def main(argv: list[str] | None = None) -> None:
    _register_all()
    try:
        app(args=argv, standalone_mode=False)
    except HeteroQwenError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except typer.Abort:
        sys.exit(130)
    except Exception as e:  # click usage errors and friends
        import click
        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Exit):
            sys.exit(e.exit_code)
        raise
    sys.exit(0)
