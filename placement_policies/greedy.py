"""Shared pieces of the structural policies: start from overrides, fill the VRAM room unit by unit."""

from __future__ import annotations

from hetero_qwen.planner.context import PlanContext


def start_homes(ctx: PlanContext) -> tuple[list[str], int]:
    """Overridden items at their forced home, everything else in RAM; and the VRAM they take."""
    homes = [ctx.forced_home(it) or "cpu" for it in ctx.items]
    used = sum(ctx.gpu_item_bytes(i) for i, h in enumerate(homes) if h == "gpu")
    return homes, used


def free(ctx: PlanContext, indices) -> list[int]:
    """The items of a unit that no override pins."""
    return [i for i in indices if ctx.forced_home(ctx.items[i]) is None]


def unit_gain_per_byte(ctx: PlanContext, unit: list[int], cap: int) -> float:
    """Objective seconds saved per VRAM byte by moving a unit from RAM to the GPU (hops ignored)."""
    gain = sum(ctx.item_objective(i, "cpu", cap) - ctx.item_objective(i, "gpu", cap) for i in unit)
    return gain / max(sum(ctx.gpu_item_bytes(i) for i in unit), 1)


def fill_in_order(ctx: PlanContext, homes: list[str], used: int, room: int,
                  units: list[list[int]], head: list[int], cap: int) -> list[str]:
    """Put `units` on the GPU in order, stopping at the first that does not fit; the head unit goes
    whenever its gain per byte beats the next unit's and it fits."""
    units = [u for u in units if u]
    k, head_left = 0, bool(head)
    while True:
        choices = []
        if k < len(units):
            choices.append(("unit", units[k]))
        if head_left:
            choices.append(("head", head))
        choices.sort(key=lambda c: -unit_gain_per_byte(ctx, c[1], cap))
        placed = False
        for what, unit in choices:
            need = sum(ctx.gpu_item_bytes(i) for i in unit)
            if used + need <= room:
                for i in unit:
                    homes[i] = "gpu"
                used += need
                if what == "unit":
                    k += 1
                else:
                    head_left = False
                placed = True
                break
        if not placed:
            return homes
