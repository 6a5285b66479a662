"""Run a policy: for each stream-slot size, let the policy propose GPU sets, spill RAM overflow to
disk, build the plans and keep the best one that fits. Raise a one-line PlanError otherwise."""

from __future__ import annotations

from typing import Callable

from ..errors import PlanError
from .advice import infeasible_message
from .build import build_plan, tiers_for
from .context import PlanContext
from .items import community_int4
from .plan import Plan
from .disk_spill import choose_spill, spill_candidates

# policy(ctx, cap) -> candidate homes lists (one home per item, "gpu" | "cpu" | "disk")
Chooser = Callable[[PlanContext, int], list]


def stream_caps(ctx: PlanContext) -> list[int]:
    """Candidate staging-slot sizes: 0 (no streaming) and each distinct streamable block size whose
    two pinned slots fit `cpu.pinned`. A slot of size s lets every block of <= s bytes stream.
    prefill.stream `on` tries only the largest slot (then none, if that cannot fit)."""
    p = ctx.p
    if not p.has_gpu or p.prefill_stream == "off":
        return [0]
    sizes = sorted({it.nbytes(h) for it in ctx.items if it.streamable for h in ("cpu", "disk")})
    sizes = [s for s in sizes if 2 * s <= p.pinned]
    if p.prefill_stream == "on":  # one slot for every block; without room for it, no streaming
        return sizes[-1:] + [0]
    return [0] + sizes


def apply_spill(ctx: PlanContext, homes: list[str], cap: int) -> list[str]:
    """Move the cheapest RAM groups to the disk tier until RAM fits (when disk.spill allows)."""
    if not ctx.p.disk_spill:
        return homes
    overflow = tiers_for(ctx, homes, cap)["cpu"].short_bytes
    chosen = choose_spill(spill_candidates(ctx, homes, cap), overflow)
    if not chosen:
        return homes
    out = list(homes)
    for i in chosen:
        out[i] = "disk"
    return out


def run_policy(ctx: PlanContext, name: str, choose: Chooser) -> Plan:
    from .mtp import with_room_for_mtp  # a second search with VRAM kept for the MTP layer, if faster
    return with_room_for_mtp(ctx, _search(ctx, name, choose), lambda c: _search(c, name, choose),
                             lambda c, plan: build_plan(c, [g.home for g in plan.groups], plan.stream_slot_bytes, name))


def _search(ctx: PlanContext, name: str, choose: Chooser) -> Plan:
    best, tried = None, []
    for cap in stream_caps(ctx):
        for homes in choose(ctx, cap):
            plan = build_plan(ctx, apply_spill(ctx, homes, cap), cap, name)
            tried.append(plan)
            if plan.fits and (best is None or plan.predicted.objective_s < best.predicted.objective_s):
                best = plan
    if best is None:
        hint = ""
        if community_int4(ctx.cfg):
            hint = (f"; this {community_int4(ctx.cfg)} checkpoint has no disk tier (its int4 packing is not what our "
                    f"kernels read): `hetero-qwen quantize --format int4` repacks it into one that has")
        raise PlanError(infeasible_message(ctx, name, tried) + hint)
    return best
