"""RAM overflow goes to the disk tier: pick which RAM-homed groups stay in the memory-mapped
checkpoint so the rest fits, at the least added cost.

Given the GPU set, this is a min-cost cover: free at least `overflow` bytes of RAM, where moving
item i frees bytes_cpu_i and costs delta_i = objective(disk) - objective(ram). Identical items
(every FFN, every DeltaNet mixer...) form a handful of types, so we enumerate how many of each type
to move: exact whenever the count grid is small (it is for every Qwen3.5/3.6 config: <= 6 types).
"""

from __future__ import annotations

import numpy as np

from .context import PlanContext

MAX_GRID = 4_000_000  # count combinations enumerated exactly; beyond, greedy by cost per byte


def spill_candidates(ctx: PlanContext, homes: list[str], cap: int) -> list[tuple[int, int, float]]:
    """(item index, RAM bytes freed, added objective seconds) for each RAM item we may move."""
    out = []
    for i, h in enumerate(homes):
        if h != "cpu" or ctx.forced_home(ctx.items[i]) == "cpu":
            continue
        delta = ctx.item_objective(i, "disk", cap) - ctx.item_objective(i, "cpu", cap)
        out.append((i, ctx.items[i].bytes_cpu, delta))
    return out


def cheapest_spill_rate(ctx: PlanContext, cap: int) -> float:
    """Added seconds per byte of RAM freed by the cheapest non-embed spill (prices RAM in the DP)."""
    homes = ["cpu"] * len(ctx.items)
    rates = [d / b for i, b, d in spill_candidates(ctx, homes, cap) if ctx.items[i].kind != "embed" and b]
    return max(min(rates, default=0.0), 0.0)


def choose_spill(cands: list[tuple[int, int, float]], overflow: int) -> list[int] | None:
    """Item indices to move, covering `overflow` bytes at least cost; all of them if even that
    cannot cover it (the plan stays infeasible but its shortfall, which the error reports, is least)."""
    if overflow <= 0:
        return []
    if sum(b for _, b, _ in cands) < overflow:
        return sorted(i for i, _, _ in cands)
    types: dict = {}
    for i, b, d in cands:
        types.setdefault((b, d), []).append(i)
    keys = list(types)
    sizes = [len(types[k]) + 1 for k in keys]
    if int(np.prod(sizes, dtype=np.float64)) > MAX_GRID:
        return _greedy(cands, overflow)
    freed, added = np.zeros(1, dtype=np.int64), np.zeros(1)
    for (b, d), n in zip(keys, sizes):
        counts = np.arange(n)
        freed = (freed[:, None] + counts[None, :] * b).ravel()
        added = (added[:, None] + counts[None, :] * d).ravel()
    ok = np.nonzero(freed >= overflow)[0]
    best = ok[np.lexsort((freed[ok], added[ok]))[0]]  # least cost, then fewest bytes moved
    counts = np.unravel_index(best, sizes)
    chosen = []
    for k, cnt in zip(keys, counts):
        chosen += sorted(types[k], reverse=True)[:int(cnt)]  # the latest layers first
    return sorted(chosen)


def _greedy(cands, overflow: int) -> list[int]:
    chosen, freed = [], 0
    for i, b, d in sorted(cands, key=lambda x: x[2] / max(x[1], 1)):
        if freed >= overflow:
            break
        chosen.append(i)
        freed += b
    return sorted(chosen)
