"""`hetero-qwen probe [--out P.yaml]`: measure this machine and write a starting profile."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def probe(out: Optional[Path] = typer.Option(None, "--out", help="write the profile here (atomically); default: print it"),
              force: bool = typer.Option(False, "--force", help="replace the --out file if it exists")):
        """Measure RAM, VRAM, memory and PCIe bandwidth and GEMM rates; write a profile for `plan`."""
        from ..probe import measure, profile_yaml, write_profile
        from ..safe_write import check_file_target

        if out is not None:
            check_file_target(out, force)  # before measuring: a bad --out fails at once
        text = profile_yaml(measure())
        if out is None:
            sys.stdout.write(text)
        else:
            write_profile(out, text, force=force)
            print(f"wrote {out}", file=sys.stderr)
