"""`layers`: whole layers (mixer, FFN and the layer's cache) on the GPU in order, like llama.cpp
`-ngl`; the rest in RAM. The embedding stays in RAM (a token reads one row); the head joins the GPU
when its gain per byte beats the next layer's and it fits."""

from __future__ import annotations

from hetero_qwen.planner.context import PlanContext

from .greedy import fill_in_order, free, start_homes


def choose(ctx: PlanContext, cap: int) -> list[list[str]]:
    homes, used = start_homes(ctx)
    room = ctx.gpu_room(cap)
    if room <= 0:
        return [homes]
    n_layers = ctx.cfg.num_hidden_layers
    units = [free(ctx, [i for i, it in enumerate(ctx.items) if it.layer == L]) for L in range(n_layers)]
    head = free(ctx, [i for i, it in enumerate(ctx.items) if it.kind == "head"])
    return [fill_in_order(ctx, homes, used, room, units, head, cap)]
