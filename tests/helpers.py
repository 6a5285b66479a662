"""Small helpers shared by the test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference relative to the reference's largest magnitude (the logit scale)."""
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


def check_matches_and_fits(eng, ids: list, expected: torch.Tensor, decode_from: int, decode_to: int,
                           tol: float = 1e-4) -> None:
    """The engine's prefill logits and its decode steps decode_from..decode_to-1 equal `expected`
    within `tol`, and every tier's measured peak stays within the plan's prediction and the budget."""
    assert rel_err(eng.logits(ids), expected) < tol
    s = eng.session()
    s.feed(ids[:decode_from])
    for i in range(decode_from, decode_to):
        assert rel_err(s.feed([ids[i]])[-1], expected[i]) < tol
    for tier, m in eng.memory_report().items():
        assert m["peak_bytes"] <= eng.plan.tiers[tier].used_bytes, (tier, m)
        if m["budget_bytes"] is not None:
            assert m["peak_bytes"] <= m["budget_bytes"]


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


def load_bench(name: str):
    """bench/<name>.py as a module (bench/ is scripts, not a package), loaded once per session."""
    key = f"bench_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, ROOT / "bench" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[key] = mod
        spec.loader.exec_module(mod)
    return sys.modules[key]
