"""Small helpers shared by the test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import pytest
import torch


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference relative to the reference's largest magnitude (the logit scale)."""
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


def first_difference(a, b) -> int:
    """Index of the first position where two sequences differ (the shorter length if none)."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def run_cli(args, capsys):
    """Run the real CLI entry point in-process: (exit code, stdout, stderr)."""
    from hetero_qwen.cli import main
    with pytest.raises(SystemExit) as exc:
        main(list(map(str, args)))
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err
