"""Turn a choice of homes (one per item) plus a stream cap into a full Plan: devices, memory per
tier, and predictions. Every policy ends here, so all plans are scored by the same code."""

from __future__ import annotations

from ..units import fmt_bytes
from . import cost
from .context import PlanContext
from .mtp import plan_mtp
from .plan import GroupPlacement, Plan, Prediction, TierUsage


def cyclic_changes(devices: list[str]) -> int:
    """Device changes along the sequence, closing the loop (head -> next token's embed)."""
    return sum(a != b for a, b in zip(devices, devices[1:] + devices[:1])) if devices else 0


def build_plan(ctx: PlanContext, homes: list[str], cap: int, policy: str) -> Plan:
    p, items = ctx.p, ctx.items
    pdev = [ctx.prefill_device(i, h, cap) for i, h in enumerate(homes)]
    groups = tuple(_placement(ctx, i, h, pdev[i]) for i, h in enumerate(homes))
    slot = max((g.bytes for g in groups if g.stream_prefill), default=0)
    tiers = _tiers(ctx, groups, slot)
    predicted = _predict(ctx, homes, pdev)
    mtp, tiers = plan_mtp(ctx, groups, tiers, predicted)  # the MTP layer, its KV and state slots (planner/mtp.py)
    notes = []
    if any(h == "disk" for h in homes):
        n = sum(h == "disk" and items[i].kind != "embed" for i, h in enumerate(homes))
        if n:
            smaller = [f for f in ("int8", "int4") if ("int4", "int8", "bf16", "fp32").index(f)
                       < ("int4", "int8", "bf16", "fp32").index(p.cpu_dtype)]
            hint = f"; weights.cpu_dtype: {' or '.join(smaller)} would shrink what RAM holds" if smaller else ""
            notes.append(f"{n} groups are read from the memory-mapped checkpoint every token (RAM is full)"
                         + hint)
    return Plan(policy=policy, model=ctx.model, profile=p.source, context=p.context,
                gpu_dtype=p.gpu_dtype, cpu_dtype=p.cpu_dtype, disk_dtype=ctx.disk_dtype,
                tiers=tiers, groups=groups, predicted=predicted, stream_slot_bytes=slot,
                notes=tuple(notes), mtp=mtp)


def _placement(ctx: PlanContext, i: int, home: str, prefill_device: str) -> GroupPlacement:
    it = ctx.items[i]
    cache = "kv" if it.kv_per_token else "state" if it.state_bytes else None
    return GroupPlacement(
        name=it.name, kind=it.kind, layer=it.layer, bytes=it.nbytes(home), dtype=ctx.dtype_of(i, home),
        home=home, decode_device=cost.device_of(home), prefill_device=prefill_device,
        stream_prefill=prefill_device != cost.device_of(home),
        crossover_tokens=_crossover(ctx, i, home) if it.streamable and home != "gpu" else None,
        cache=cache, cache_bytes=it.cache_bytes(ctx.p.context))


def _crossover(ctx: PlanContext, i: int, home: str) -> int | None:
    """The chunk size from which this block streams: the cost model's, or every multi-token
    forward under `prefill.stream: on`."""
    return 2 if ctx.p.prefill_stream == "on" else ctx.crossover(i, home)


def tiers_for(ctx: PlanContext, homes: list[str], cap: int) -> dict:
    """Memory per tier of a choice of homes, without the predictions (cheap; used while searching)."""
    groups = [_placement(ctx, i, h, ctx.prefill_device(i, h, cap)) for i, h in enumerate(homes)]
    return _tiers(ctx, groups, max((g.bytes for g in groups if g.stream_prefill), default=0))


def _tiers(ctx: PlanContext, groups, slot: int) -> dict:
    p = ctx.p
    gpu_used = any(g.home == "gpu" or g.stream_prefill for g in groups)

    def lines(device_home: str) -> dict:
        mine = [g for g in groups if (g.home == "gpu") == (device_home == "gpu")]
        return {
            "weights": sum(g.bytes for g in mine if g.home == device_home),
            "kv": sum(g.cache_bytes for g in mine if g.cache == "kv"),
            "state": sum(g.cache_bytes for g in mine if g.cache == "state"),
        }

    gpu = lines("gpu")
    if gpu_used:
        gpu.update({"working_set" if k == "activations" else f"{k}_working_set": v  # planner.working_set
                    for k, v in ctx.gpu_working_set(slot).items()})
        gpu.update(stream_slots=2 * slot, reserve=p.gpu_reserve)
    cpu = lines("cpu")
    cpu.update(pinned_staging=2 * slot, working_set=ctx.activation_bytes, reserve=p.cpu_reserve)
    disk = {"weights": sum(g.bytes for g in groups if g.home == "disk")}
    disk_budget = sum(it.bytes_disk for it in ctx.items) if p.disk_spill else 0
    return {
        "gpu": TierUsage(p.vram, sum(gpu.values()), gpu),
        "cpu": TierUsage(p.ram, sum(cpu.values()), cpu),
        "disk": TierUsage(disk_budget, sum(disk.values()), disk),
    }


def decode_seconds(ctx: PlanContext, homes: list[str], position: float) -> tuple[float, dict]:
    """Seconds per token at `position` and where they go (gpu, cpu, disk, hops)."""
    parts = {"gpu": 0.0, "cpu": 0.0, "disk": 0.0, "hops": 0.0}
    for i, h in enumerate(homes):
        parts[h] += ctx.decode_s(i, h, position)
    parts["hops"] = cyclic_changes([cost.device_of(h) for h in homes]) * cost.decode_hop_time(ctx.p)
    return sum(parts.values()), parts


def _predict(ctx: PlanContext, homes: list[str], pdev: list[str]) -> Prediction:
    p, items, hidden = ctx.p, ctx.items, ctx.cfg.hidden_size
    dec_devs = [cost.device_of(h) for h in homes]
    hops_dec, hops_pre = cyclic_changes(dec_devs), cyclic_changes(pdev)
    t_dec, parts = decode_seconds(ctx, homes, ctx.position)
    t_full, _ = decode_seconds(ctx, homes, p.context)

    t_pre = sum(ctx.prefill_s(i, h, pdev[i]) for i, h in enumerate(homes))
    t_pre += hops_pre * sum(cost.prefill_hop_time(n, hidden, p) for n, _ in ctx.chunks)

    dec_bytes = {"gpu": 0.0, "cpu": 0.0, "disk": 0.0, "pcie": float(hops_dec * hidden * 2)}
    pre_bytes = {"gpu": 0.0, "cpu": 0.0, "disk": 0.0, "pcie": 0.0}
    for i, h in enumerate(homes):
        it, dev = items[i], dec_devs[i]
        dec_bytes[h] += cost.decode_weight_bytes(it, h)
        dec_bytes[dev] += cost.decode_cache_bytes(it, ctx.position)
        for n, pre in ctx.chunks:
            wb, cb = cost.prefill_weight_bytes(it, h, n), cost.prefill_cache_bytes(it, n, pre)
            if pdev[i] == dev:
                pre_bytes[h] += wb
                pre_bytes[dev] += cb
            else:
                pre_bytes[h] += wb
                pre_bytes["pcie"] += wb + cb
    pre_bytes["pcie"] += hops_pre * sum(n * hidden * 2 for n, _ in ctx.chunks)

    return Prediction(
        position=ctx.position, decode_s_per_token=t_dec, decode_tokens_per_s=1.0 / t_dec,
        decode_tokens_per_s_at_context=1.0 / t_full, prefill_tokens=p.prompt_tokens,
        prefill_s=t_pre, prefill_tokens_per_s=p.prompt_tokens / t_pre,
        objective_s=t_pre + p.output_tokens * t_dec, decode_time_s=parts,
        decode_bytes=dec_bytes, prefill_bytes=pre_bytes, hops_decode=hops_dec, hops_prefill=hops_pre,
        bottleneck=_bottleneck(ctx, parts, dec_bytes, t_dec))


def _main_format(ctx: PlanContext, tier: str) -> str | None:
    """The format most of a tier's weight bytes are in (what its bandwidth share is quoted for)."""
    by = {}
    for it in ctx.items:
        by[it.fmt(tier)] = by.get(it.fmt(tier), 0) + it.nbytes(tier)
    return max(by, key=by.get) if by else None


def _bottleneck(ctx: PlanContext, parts: dict, dec_bytes: dict, total: float) -> str:
    name = max(parts, key=parts.get)
    share = 100 * parts[name] / total
    if name == "hops":
        return f"GPU<->CPU hops ({share:.0f}% of decode time)"
    bw = cost.tier_bandwidth(ctx.p, name, _main_format(ctx, name)) / 1e9
    what = {"gpu": "GPU memory", "cpu": "CPU memory", "disk": "disk (mmap) reads"}[name]
    return f"{what}: {fmt_bytes(dec_bytes[name])} per token at {bw:g} GB/s ({share:.0f}% of decode time)"
