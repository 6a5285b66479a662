"""Options and helpers shared by the commands that load a model."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

ModelOpt = typer.Option(None, "--model", "-m", help="Checkpoint directory (default: the embedded tiny random model)")
ProfileOpt = typer.Option(None, "--profile", "-p", help="Memory-budget YAML profile (default: probe this machine)")


def say(msg: str) -> None:
    """A status line for people: stderr, so stdout stays clean for pipes."""
    print(msg, file=sys.stderr, flush=True)


def resolve_model(model: Optional[str]) -> Path:
    if model:
        return Path(model)
    from ..tiny import ensure_tiny
    path = ensure_tiny()
    say(f"no --model given: using the embedded tiny model at {path} (random weights, output is noise)")
    return path
