"""`ffn-cpu`: every mixer with its KV cache or DeltaNet state on the GPU, every FFN in RAM and
computed by the CPU, like llama.cpp `--n-cpu-moe` / KTransformers rules. If the mixers do not all
fit, the first ones in layer order go (the rest stay on the CPU); the head joins when it fits."""

from __future__ import annotations

from hetero_qwen.planner.context import PlanContext

from .greedy import fill_in_order, free, start_homes


def choose(ctx: PlanContext, cap: int) -> list[list[str]]:
    homes, used = start_homes(ctx)
    room = ctx.gpu_room(cap)
    if room <= 0:
        return [homes]
    mixers = [free(ctx, [i]) for i, it in enumerate(ctx.items) if it.kind in ("attention", "deltanet")]
    head = free(ctx, [i for i, it in enumerate(ctx.items) if it.kind == "head"])
    return [fill_in_order(ctx, homes, used, room, mixers, head, cap)]
