"""`auto`: the cost-model optimum found by the dynamic program in `auto_search.py`.

Candidates per stream-slot size: the DP optimum with RAM free (exact whenever it fits in RAM); if
it overflows RAM, DP optima with RAM priced per byte (a Lagrangian sweep starting at the cheapest
disk-spill rate), which push weights to the GPU until RAM fits; and the `layers` and `ffn-cpu`
placements, so `auto` is never predicted slower than either. `hetero_qwen.planner.run_policy` spills and picks the best.
"""

from __future__ import annotations

from hetero_qwen.planner.build import tiers_for
from hetero_qwen.planner.context import PlanContext
from hetero_qwen.planner.disk_spill import cheapest_spill_rate

from . import ffn_cpu, layers
from .auto_search import optimal_homes

PRICE_STEPS = 6  # RAM prices tried: base * 4**k


def _overflows(ctx: PlanContext, homes: list[str], cap: int) -> bool:
    return tiers_for(ctx, homes, cap)["cpu"].short_bytes > 0


def choose(ctx: PlanContext, cap: int) -> list[list[str]]:
    candidates = []
    found = optimal_homes(ctx, cap)
    if found:
        candidates.append(found[0])
        if _overflows(ctx, found[0], cap):
            # seconds per RAM byte: the disk-spill rate, or J per byte of the model without spill
            base = cheapest_spill_rate(ctx, cap) if ctx.p.disk_spill else 0.0
            if base <= 0:
                base = found[1] / max(sum(it.bytes_cpu for it in ctx.items), 1)
            for k in range(PRICE_STEPS):
                priced = optimal_homes(ctx, cap, extra_cpu_cost=base * 4**k)
                if priced:
                    candidates.append(priced[0])
                    if not ctx.p.disk_spill and not _overflows(ctx, priced[0], cap):
                        break
    return candidates + layers.choose(ctx, cap) + ffn_cpu.choose(ctx, cap)
