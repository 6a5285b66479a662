"""The readable `hetero-qwen plan` report: memory per tier against budget, a one-character-per-layer
map of where each part lives and runs, predicted speeds and the bottleneck."""

from __future__ import annotations

from ..units import fmt_bytes
from .plan import GroupPlacement, Plan

LEGEND = ("G = GPU, c = RAM (CPU computes), s = RAM streamed to the GPU for prefill, "
          "d = disk (mmap, CPU computes), D = disk streamed for prefill")


def cell(g: GroupPlacement) -> str:
    if g.home == "gpu":
        return "G"
    if g.home == "cpu":
        return "s" if g.stream_prefill else "c"
    return "D" if g.stream_prefill else "d"


def layer_map(plan: Plan) -> list[str]:
    layers = sorted({g.layer for g in plan.groups if g.layer is not None})
    by = {(g.layer, g.kind == "ffn"): g for g in plan.groups if g.layer is not None}
    kinds = "".join("A" if by[(L, False)].kind == "attention" else "-" for L in layers)
    mixers = "".join(cell(by[(L, False)]) for L in layers)
    ffns = "".join(cell(by[(L, True)]) for L in layers)
    ruler = "".join(str(L // 10 % 10) if L % 10 == 0 else " " for L in layers)
    return [f"  layer  {ruler}", f"  type   {kinds}   (A = full attention, - = DeltaNet)",
            f"  mixer  {mixers}", f"  ffn    {ffns}"]


def formats_by_tier(plan: Plan) -> list[str]:
    """Per tier that holds weights: each group kind's format(s), e.g. `gpu: ffn int4, head int8`.
    DeltaNet groups in a quantized GPU format keep in_proj_a/b in float (planner/group_formats.py)."""
    from .group_formats import FLOAT_ON_GPU, GPU_QUANT
    lines = []
    for tier in ("gpu", "cpu", "disk"):
        kinds: dict[str, set] = {}
        for g in plan.groups:
            if g.home == tier and g.kind != "vision":
                kinds.setdefault(g.kind, set()).add(g.dtype)
        if not kinds:
            continue
        parts = []
        for kind in ("embed", "deltanet", "attention", "ffn", "head"):
            if kind in kinds:
                fmts = "/".join(sorted(kinds[kind]))
                if tier == "gpu" and kind in FLOAT_ON_GPU and kinds[kind] & set(GPU_QUANT):
                    fmts += f" ({'/'.join(n.split('.')[0] for n in FLOAT_ON_GPU[kind])} float)"
                parts.append(f"{kind} {fmts}")
        lines.append(f"  {tier:<5}{', '.join(parts)}")
    return lines


def render(plan: Plan) -> str:
    pr = plan.predicted
    out = [f"plan: {plan.model}, policy {plan.policy}, profile {plan.profile}, context {plan.context} tokens",
           f"weights: gpu {plan.gpu_dtype}, cpu {plan.cpu_dtype}, disk {plan.disk_dtype} (checkpoint); by group:"]
    out += formats_by_tier(plan)
    out += ["", "memory (used / budget):"]
    for name, t in plan.tiers.items():
        detail = ", ".join(f"{k} {fmt_bytes(v)}" for k, v in t.lines.items() if v)
        flag = "" if t.fits else f"  SHORT BY {fmt_bytes(t.short_bytes)}"
        out.append(f"  {name:<5}{fmt_bytes(t.used_bytes):>12} / {fmt_bytes(t.budget_bytes):<11}{detail}{flag}")
    embed = next(g for g in plan.groups if g.kind == "embed")
    head = next(g for g in plan.groups if g.kind == "head")
    out += ["", f"placement ({LEGEND}):"] + layer_map(plan)
    out += [f"  embed {cell(embed)}   head {cell(head)}   KV cache: {plan.kv_home}   "
            f"DeltaNet state: {plan.state_home}   stream slot: {fmt_bytes(plan.stream_slot_bytes)}"]
    tower = next((g for g in plan.groups if g.kind == "vision"), None)
    if tower is not None:
        out.append(f"  vision tower {cell(tower)} ({fmt_bytes(tower.bytes)} {tower.dtype}; runs once per image "
                   f"prompt, at prefill)")
    t = pr.decode_time_s
    read = pr.decode_bytes
    out += ["", f"predicted (prompt {pr.prefill_tokens} tokens, then decode at mean position {pr.position:g}):",
            f"  decode   {pr.decode_tokens_per_s:6.2f} tokens/s  ({pr.decode_s_per_token * 1e3:.1f} ms/token: "
            f"gpu {t['gpu'] * 1e3:.1f} + cpu {t['cpu'] * 1e3:.1f} + disk {t['disk'] * 1e3:.1f} + "
            f"{pr.hops_decode} hops {t['hops'] * 1e3:.2f} ms; reads gpu {fmt_bytes(read['gpu'])}, "
            f"cpu {fmt_bytes(read['cpu'])}, disk {fmt_bytes(read['disk'])})",
            f"  decode   {pr.decode_tokens_per_s_at_context:6.2f} tokens/s  with the full {plan.context}-token context cached",
            f"  prefill  {pr.prefill_tokens_per_s:6.0f} tokens/s  ({pr.prefill_s:.2f} s; "
            f"{fmt_bytes(pr.prefill_bytes['pcie'])} over PCIe)",
            f"  bottleneck: {pr.bottleneck}"]
    out += mtp_lines(plan)
    out += [f"  note: {n}" for n in plan.notes]
    return "\n".join(out)


def mtp_lines(plan: Plan) -> list[str]:
    """Predicted decode with and without MTP speculative decoding, the chosen k and where the layer
    lives (planner/mtp.py); nothing for a model without an MTP layer."""
    m = plan.mtp
    if m is None:
        return []
    by_k = ", ".join(f"{k}: {v:.2f}" for k, v in enumerate(m.tokens_per_s_by_k))
    where = "nowhere (no tier has room)" if m.home is None else (
        f"{'the GPU' if m.home == 'gpu' else 'RAM (CPU computes)'}, {fmt_bytes(m.bytes)} {m.dtype} + "
        f"KV {fmt_bytes(m.cache_bytes)}" + (f"; DeltaNet state slots {fmt_bytes(m.state_slot_bytes)}"
                                            if m.state_slot_bytes else ""))
    vocab = f"; drafts from token ids < {m.draft_vocab}" if m.draft_vocab else ""
    return [f"  MTP      {m.decode_tokens_per_s_mtp:6.2f} tokens/s  with {m.draft_tokens} drafts per step "
            f"({m.decode_tokens_per_s:.2f} without); {m.reason}",
            f"           tokens/s by drafts per step k: {by_k} (acceptance {m.acceptance:g} per draft)",
            f"           MTP layer: {where}{vocab}"]
