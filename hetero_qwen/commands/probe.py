"""`hetero-qwen probe [--out P.yaml]`: measure this machine and write a starting profile."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def probe(out: Optional[Path] = typer.Option(None, "--out", help="write the profile here (atomically); default: print it")):
        """Measure RAM, VRAM, memory and PCIe bandwidth and GEMM rates; write a profile for `plan`."""
        from ..probe import measure, profile_yaml, write_profile

        text = profile_yaml(measure())
        if out is None:
            sys.stdout.write(text)
        else:
            write_profile(out, text)
            print(f"wrote {out}", file=sys.stderr)
