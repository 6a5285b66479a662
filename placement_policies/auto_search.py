"""The `auto` policy's exact search for the GPU set: a dynamic program over the execution order.

Objective (seconds per workload turn, see hetero_qwen/planner/COST_MODEL.md):
    sum_i cost_i(home_i) + sum of hop costs between consecutive ops (cyclic)
subject to sum over GPU items of (weights + cache) <= VRAM room.

State after item i: (start state, current (decode device, prefill device), exact VRAM bytes used).
For each (start, current) pair we keep the Pareto frontier of (bytes, cost): the cheapest cost for
each amount of VRAM, dropping any point that uses more bytes for no less cost. Bytes are exact
integers (no rounding), so the result is the true optimum of the objective over every per-item
gpu/off-GPU assignment that fits. Off-GPU items are scored in RAM (or on disk if an override says
so); `extra_cpu_cost` adds a per-item penalty to the RAM option (used to price disk spill).
"""

from __future__ import annotations

import numpy as np

from hetero_qwen.planner.context import STATES, STATE_INDEX, PlanContext
from hetero_qwen.planner.cost import device_of


def item_options(ctx: PlanContext, i: int, cap: int, extra_cpu_cost: float = 0.0) -> list[tuple]:
    """(home, state index, vram bytes, objective seconds) for each allowed home of item i."""
    forced = ctx.forced_home(ctx.items[i])
    homes = [forced] if forced else (["gpu", "cpu"] if ctx.gpu_room(cap) > 0 else ["cpu"])
    out = []
    for h in homes:
        state = STATE_INDEX[(device_of(h), ctx.prefill_device(i, h, cap))]
        vram = ctx.gpu_item_bytes(i) if h == "gpu" else 0
        c = ctx.item_objective(i, h, cap)
        if h == "cpu" and not forced:
            c += extra_cpu_cost * ctx.items[i].bytes_cpu
        out.append((h, state, vram, c))
    return out


def _pareto(v: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Indices of the (bytes, cost) frontier, by increasing bytes and strictly decreasing cost."""
    order = np.lexsort((c, v))
    cs = c[order]
    keep = np.empty(len(cs), dtype=bool)
    keep[0] = True
    keep[1:] = cs[1:] < np.minimum.accumulate(cs)[:-1]
    return order[keep]


def optimal_homes(ctx: PlanContext, cap: int, extra_cpu_cost: float = 0.0) -> tuple[list[str], float] | None:
    """Homes minimising the objective within the VRAM room for stream cap `cap`, and that cost
    (without the disk-spill correction). None if forced GPU items cannot fit."""
    room = max(ctx.gpu_room(cap), 0)
    n = len(ctx.items)
    opts = [item_options(ctx, i, cap, extra_cpu_cost) for i in range(n)]
    hop = np.array([[ctx.hop_objective(a, b) for b in STATES] for a in STATES])

    # frontier[(start, cur)] = (bytes, cost); back[i][(start, cur)] = (prev key, prev index, option)
    frontier: dict = {}
    back: list[dict] = []
    step = {}
    for k, (_, st, v, c) in enumerate(opts[0]):
        if v <= room:
            frontier[(st, st)] = (np.array([v], dtype=np.int64), np.array([c]))
            step[(st, st)] = (None, np.array([0]), np.array([k]))
    back.append(step)
    for i in range(1, n):
        cand: dict = {}
        for key, (V, C) in frontier.items():
            start, cur = key
            for k, (_, st, v, c) in enumerate(opts[i]):
                nv = V + v
                ok = np.nonzero(nv <= room)[0]
                if len(ok):
                    cand.setdefault((start, st), []).append((nv[ok], C[ok] + (c + hop[cur, st]), key, ok, k))
        frontier, step = {}, {}
        for key, parts in cand.items():
            v = np.concatenate([x[0] for x in parts])
            c = np.concatenate([x[1] for x in parts])
            prev_key = np.concatenate([np.full(len(x[0]), j) for j, x in enumerate(parts)])
            prev_idx = np.concatenate([x[3] for x in parts])
            opt = np.concatenate([np.full(len(x[0]), x[4]) for x in parts])
            keep = _pareto(v, c)
            frontier[key] = (v[keep], c[keep])
            step[key] = ([x[2] for x in parts], prev_idx[keep], opt[keep], prev_key[keep])
        back.append(step)
        if not frontier:
            return None

    # close the cycle and take the cheapest end point (the last of each frontier)
    best = None
    for key, (V, C) in frontier.items():
        start, cur = key
        total = C[-1] + hop[cur, start]
        if best is None or total < best[0]:
            best = (total, key, len(C) - 1)
    total, key, idx = best
    homes = [""] * n
    for i in range(n - 1, 0, -1):
        keys, prev_idx, opt, prev_key = back[i][key]
        homes[i] = opts[i][opt[idx]][0]
        key, idx = keys[prev_key[idx]], prev_idx[idx]
    _, _, opt0 = back[0][key]
    homes[0] = opts[0][opt0[idx]][0]
    return homes, float(total)
