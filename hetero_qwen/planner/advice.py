"""The one line an infeasible budget gets: which tier is short, by how much, and which knobs fix it."""

from __future__ import annotations

import math

from ..units import fmt_bytes, fmt_size_yaml
from .context import PlanContext
from .plan import Plan


def _nearest(plans: list[Plan]) -> Plan:
    return min(plans, key=lambda pl: sum(t.short_bytes for t in pl.tiers.values()))


def infeasible_message(ctx: PlanContext, policy: str, plans: list[Plan]) -> str:
    p = ctx.p
    plan = _nearest(plans)
    gpu, cpu = plan.tiers["gpu"], plan.tiers["cpu"]
    if gpu.short_bytes:
        forced = sum(g.bytes + g.cache_bytes for g in plan.groups
                     if g.home == "gpu" and p.home_override(g.name) == "gpu")
        return (f"{policy}: does not fit in gpu.vram: needs {fmt_bytes(gpu.used_bytes)} of "
                f"{fmt_bytes(gpu.budget_bytes)} ({fmt_bytes(gpu.short_bytes)} missing; overrides pin "
                f"{fmt_bytes(forced)} on the GPU); fix: fewer 'home: gpu' overrides, "
                f"a smaller context, or gpu.vram >= {fmt_size_yaml(_round_up(gpu.used_bytes))}")
    short = cpu.short_bytes
    lines = cpu.lines
    what = ", ".join(f"{k} {fmt_bytes(v)}" for k, v in lines.items() if v)
    fixes = []
    kv_ram_per_token = sum(ctx.items[i].kv_per_token for i, g in enumerate(plan.groups)
                           if g.cache == "kv" and g.decode_device == "cpu")
    if kv_ram_per_token:
        fit = p.context - math.ceil(short / kv_ram_per_token)
        if fit >= 1:
            fixes.append(f"context <= {fit}")
    ram_weights = [i for i, g in enumerate(plan.groups) if g.home == "cpu"]
    if ram_weights:
        now = sum(ctx.items[i].bytes_cpu for i in ram_weights)
        by_name = {g.name: g for g in ctx.cfg.weight_groups()}
        for fmt in ("int8", "int4"):
            if _smaller(fmt, p.cpu_dtype):
                saved = now - sum(by_name[ctx.items[i].name].nbytes(fmt) for i in ram_weights)
                fixes.append(f"weights.cpu_dtype: {fmt} (saves {fmt_bytes(saved)})")
        if not p.disk_spill:
            fixes.append("disk.spill: true (read the rest from the checkpoint, slowly)")
    fixes.append(f"cpu.ram >= {fmt_size_yaml(_round_up(cpu.used_bytes))}")
    return (f"{policy}: does not fit in cpu.ram: needs {fmt_bytes(cpu.used_bytes)} of "
            f"{fmt_bytes(cpu.budget_bytes)}, {fmt_bytes(short)} missing ({what}); "
            f"fix: {', or '.join(fixes)}")


def _smaller(fmt: str, than: str) -> bool:
    order = ("int4", "int8", "bf16", "fp32")
    return order.index(fmt) < order.index(than)


def _round_up(n: int) -> int:
    """Up to whole GiB from 1 GiB on, else to whole MiB."""
    unit = 2**30 if n >= 2**30 else 2**20
    return math.ceil(n / unit) * unit
