"""`auto`: the cost-model optimum found by the dynamic program in `hetero_qwen.planner.search`.

Candidates per stream-slot size: the DP optimum with RAM free, and (when RAM is short) the DP
optimum with RAM priced at the cheapest disk-spill rate; the `layers` and `ffn-cpu` placements are
scored too, so `auto` is never predicted slower than either. The driver spills and picks the best.
"""

from __future__ import annotations

from hetero_qwen.planner.build import tiers_for
from hetero_qwen.planner.context import PlanContext
from hetero_qwen.planner.search import optimal_homes
from hetero_qwen.planner.spill import cheapest_spill_rate

from . import ffn_cpu, layers


def choose(ctx: PlanContext, cap: int) -> list[list[str]]:
    candidates = []
    found = optimal_homes(ctx, cap)
    if found:
        candidates.append(found[0])
        if ctx.p.disk_spill and tiers_for(ctx, found[0], cap)["cpu"].short_bytes:
            priced = optimal_homes(ctx, cap, extra_cpu_cost=cheapest_spill_rate(ctx, cap))
            if priced:
                candidates.append(priced[0])
    return candidates + layers.choose(ctx, cap) + ffn_cpu.choose(ctx, cap)
