"""`hetero-qwen` console entry point: a typer app assembled from `hetero_qwen.commands.*`.

The promise (README "Errors and interrupts"): a user-facing failure prints exactly one line that
starts with `error:` on stderr and exits 2 (usage errors may add the usage hint on the lines after
it); Ctrl-C prints `interrupted` and exits 130, SIGTERM prints `terminated` and exits 143; never a
traceback. A bug we did not foresee prints one `error: internal error ...` line and exits 70
(HETERO_QWEN_DEBUG=1 shows the traceback instead).
"""

from __future__ import annotations

import functools
import importlib
import os
import sys

import typer

from .errors import HeteroQwenError
from .interrupts import INTERRUPT_EXIT, Interrupted, Terminated, install_sigterm

COMMAND_MODULES = ("run", "chat", "serve", "plan", "probe", "tools")  # modules under hetero_qwen.commands, each with register(app)
USAGE_EXIT = 2
INTERNAL_ERROR_EXIT = 70  # EX_SOFTWARE
DEBUG_ENV = "HETERO_QWEN_DEBUG"

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Run Qwen3.5/3.6 hybrid models on one GPU plus host RAM.")


def _click_classes(name: str) -> tuple[type, ...]:
    """`name` from every click typer may use: the click package (typer < 0.20 raises its classes)
    and the copy typer bundles as `typer._click` (typer >= 0.20)."""
    found = []
    for module in ("click.exceptions", "typer._click.exceptions", "typer.exceptions"):
        try:
            cls = getattr(importlib.import_module(module), name, None)
        except ImportError:
            continue
        if isinstance(cls, type) and cls not in found:
            found.append(cls)
    return tuple(found)


CLICK_ERRORS = _click_classes("ClickException")
USAGE_ERRORS = _click_classes("UsageError")
NO_ARGS_ERRORS = _click_classes("NoArgsIsHelpError")
EXITS = _click_classes("Exit") + ((typer.Exit,) if typer.Exit not in _click_classes("Exit") else ())
ABORTS = _click_classes("Abort") + ((typer.Abort,) if typer.Abort not in _click_classes("Abort") else ())


def _interrupt_as_exception(fn):
    """typer turns a KeyboardInterrupt inside a command into a bare exit status; keep it visible."""
    @functools.wraps(fn)
    def command(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            raise Interrupted() from None
    return command


def _register_all() -> None:
    if app.registered_commands:
        return
    for name in COMMAND_MODULES:
        importlib.import_module(f"hetero_qwen.commands.{name}").register(app)
    for info in app.registered_commands:
        info.callback = _interrupt_as_exception(info.callback)


def _usage_error(e: Exception) -> int:
    """One `error:` line, then the usage hint (never a line starting with `error:`)."""
    ctx = getattr(e, "ctx", None)
    if isinstance(e, NO_ARGS_ERRORS):  # `hetero-qwen` alone, or a group without a command
        print(e.format_message().rstrip("\n"), file=sys.stderr)
        print("error: no command given; pick one of the commands above", file=sys.stderr)
        return USAGE_EXIT
    message = e.format_message().strip().replace("\n", " ")
    print(f"error: {message[:1].lower() + message[1:]}", file=sys.stderr)
    if ctx is not None:
        try:
            print(f"{ctx.get_usage()}\nTry '{ctx.command_path} --help' for help.", file=sys.stderr)
        except Exception:
            pass
    return getattr(e, "exit_code", USAGE_EXIT) or USAGE_EXIT


def _run(argv: list[str] | None) -> int:
    bad = next((a for a in (argv if argv is not None else sys.argv[1:]) if "\x00" in a), None)
    if bad is not None:  # only reachable through main([...]): execve cannot pass a NUL
        print(f"error: argument {bad!r} contains a NUL byte", file=sys.stderr)
        return USAGE_EXIT
    try:
        _register_all()
        rv = app(args=argv, standalone_mode=False, prog_name="hetero-qwen")
    except HeteroQwenError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except (Interrupted, KeyboardInterrupt):
        print("interrupted", file=sys.stderr)
        return INTERRUPT_EXIT
    except Terminated as e:
        print("terminated", file=sys.stderr)
        return e.exit_code
    except USAGE_ERRORS as e:
        return _usage_error(e)
    except CLICK_ERRORS as e:
        print(f"error: {e.format_message()}", file=sys.stderr)
        return getattr(e, "exit_code", 1) or 1
    except EXITS as e:
        return getattr(e, "exit_code", 0)
    except ABORTS:  # typer's answer to EOF at a prompt (Ctrl-D)
        print("interrupted", file=sys.stderr)
        return INTERRUPT_EXIT
    except BrokenPipeError:  # `hetero-qwen generate ... | head`: the reader left; not our error
        try:  # point fd 1 at /dev/null so the interpreter's final flush does not complain
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return 1
    except OSError as e:  # a path the user gave that the OS refuses (too long, no permission, ...)
        if e.filename is None or os.environ.get(DEBUG_ENV):
            return _internal_error(e)
        print(f"error: {e.filename}: {e.strerror or e}", file=sys.stderr)
        return USAGE_EXIT
    except Exception as e:
        return _internal_error(e)
    # non-standalone typer returns the code of a `typer.Exit(code)` raised in a command, and turns
    # a KeyboardInterrupt outside our command wrapper (argument parsing) into 130
    if isinstance(rv, int) and not isinstance(rv, bool):
        if rv == INTERRUPT_EXIT:
            print("interrupted", file=sys.stderr)
        return rv
    return 0


def _internal_error(e: Exception) -> int:
    """A bug: one line (the traceback with HETERO_QWEN_DEBUG=1)."""
    if os.environ.get(DEBUG_ENV):
        raise e
    detail = str(e).splitlines()[0] if str(e) else ""
    print(f"error: internal error: {type(e).__name__}{': ' + detail if detail else ''} "
          f"(a bug; rerun with {DEBUG_ENV}=1 for the traceback and report it)", file=sys.stderr)
    return INTERNAL_ERROR_EXIT


def main(argv: list[str] | None = None) -> None:
    install_sigterm()
    code = _run(argv)
    try:
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        pass
    sys.exit(code)
