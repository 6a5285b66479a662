"""The MTP layer in the plan: where it lives, what memory it holds, and how many drafts per step
(k) pay on this machine. Plain numbers from the config and the profile, like the rest of the planner.

Memory, on the tiers' lines when the chosen k > 0 (k = 0: MTP off, nothing loaded, nothing charged):
    mtp          its weights: fc [H, 2H] + one gated full-attention layer + MLP + norms, in the
                 format of its home (the head's format on the GPU, weights.cpu_dtype in RAM)
    mtp_kv       its own KV cache: one attention layer, `context` tokens
    state_slots  a verify forward keeps every DeltaNet layer's recurrent + conv state after each of
                 its k + 1 positions (rollback is an index choice): (k + 1) x that state, on the
                 device that holds the state (model/cache.py DeltaNetCache.record)
It goes where the head decodes (every draft ends in the head: no hop between them) when it fits
there, else in RAM (computed on the CPU); when it fits nowhere MTP is off.

Speed, per verify step with k drafts and per-draft acceptance a (drafts accepted in order):
    E(k)        = sum_{i=0..k} a^i                     tokens a step yields
    step(k)     = k * t_draft + t_catchup + t_verify(k + 1)
    t_draft     = embed row + MTP layer + head on their devices, plus the hops between them
    t_catchup   = the MTP layer over the accepted tokens (no head): its KV cache must hold every
                  position for the next draft (speculative.MtpState.push)
    t_verify(n) = the plan's decode of n tokens: weights read once, FLOPs x n, KV read once,
                  DeltaNet state read once and written n times, embed n rows; plus the decode hops
    tokens/s    = E(k) / step(k);  k = 0 is plain decoding, 1 / T_dec (t_verify(1) = T_dec exactly)
k is the best of 0..4 (`mtp.draft_tokens: auto`), or fixed by the profile / `--draft-tokens`.
"""

from __future__ import annotations

from dataclasses import replace

from .. import measured_defaults
from . import cost
from .context import PlanContext
from .items import Item
from .plan import GroupPlacement, MtpPlacement, Prediction, device_of

MAX_AUTO_DRAFTS = 4  # `auto` tries k = 0..4: beyond that a^k leaves little to gain at published acceptances


def acceptance(ctx: PlanContext) -> float:
    a = ctx.p.mtp_acceptance
    return measured_defaults.MTP_ACCEPTANCE.value if a is None else a


def expected_tokens(a: float, k: int) -> float:
    """Tokens one verify step yields: the bonus token plus each draft accepted in order."""
    return sum(a ** i for i in range(k + 1))


# ---- the MTP layer's items (priced like the trunk's) -------------------------------------------
def mtp_items(ctx: PlanContext, gpu_fmt: str) -> list[Item]:
    """fc, attention and MLP of the MTP layer as cost-model items; bytes in `gpu_fmt` on the GPU,
    weights.cpu_dtype in RAM. Its attention's K/V per token is the trunk's per layer."""
    cfg, p = ctx.cfg, ctx.p
    kv = kv_bytes_per_token(ctx)
    out = []
    for g in cfg.mtp_weight_groups():
        extra = {}
        if g.kind == "attention":
            extra = dict(kv_per_token=kv, attn_pair_flops=4 * cfg.num_attention_heads * cfg.head_dim)
        out.append(Item(name=g.name, kind=g.kind, layer=None, params=sum(r * c for _, (r, c) in g.matrices),
                        bytes_gpu=g.nbytes(gpu_fmt), bytes_cpu=g.nbytes(p.cpu_dtype),
                        bytes_disk=g.nbytes(ctx.disk_dtype), row_bytes={}, fmt_gpu=gpu_fmt,
                        fmt_cpu=p.cpu_dtype, fmt_disk=ctx.disk_dtype, **extra))
    return out


def kv_bytes_per_token(ctx: PlanContext) -> int:
    """K + V bytes one token adds to one attention layer, as the plan's own attention items say."""
    kv = next((it.kv_per_token for it in ctx.items if it.kind == "attention"), None)
    if kv is None:  # no full-attention layer in the trunk: the compute dtype's K and V
        act = 4 if "fp32" in (ctx.p.gpu_dtype, ctx.p.cpu_dtype) else 2
        kv = 2 * ctx.cfg.num_key_value_heads * ctx.cfg.head_dim * act
    return kv


# ---- pricing --------------------------------------------------------------------------------------
# A CPU forward of n > 1 tokens costs more than reading the weights once (measured_defaults says how):
# each extra token adds a share of the batch-1 read time (the small-batch kernels' compute) and a
# share of the per-op cost (the mixers run once per position on the fast path, executor/cpu_decode.py).
CPU_VERIFY_EXTRA_TOKEN = measured_defaults.CPU_VERIFY_EXTRA_TOKEN.value
CPU_VERIFY_OP_PER_TOKEN = measured_defaults.CPU_VERIFY_OP_PER_TOKEN.value


def draft_vocab(ctx: PlanContext) -> int:
    """Token ids a draft picks among (profile mtp.draft_vocab; the whole vocabulary by default)."""
    v = ctx.p.mtp_draft_vocab
    return ctx.cfg.vocab_size if v == "all" else min(int(v), ctx.cfg.vocab_size)


def batch_time(item: Item, home: str, position: float, n: float, p) -> float:
    """Roofline seconds of `item` over n tokens in one forward at `position` cached tokens: its
    weights read once (the embedding: n rows), FLOPs x n, attention's KV read once, a DeltaNet
    state read once and written n times (verify keeps one per position). n = 1 is cost.decode_time."""
    dev = device_of(home)
    weights = n * item.row_bytes[home] if item.kind == "embed" else cost.decode_weight_bytes(item, home)
    cache = item.kv_per_token * position + (1 + n) * item.state_bytes
    read = weights / cost.tier_bandwidth(p, home, item.fmt(home))
    overhead = p.cpu_op_overhead if dev == "cpu" and item.kind != "embed" else 0.0
    if dev == "cpu" and n > 1 and item.kind != "embed":  # measured: small batches cost more on the CPU
        read *= 1 + (n - 1) * CPU_VERIFY_EXTRA_TOKEN.get(item.fmt(home), 0.5)
        overhead *= 1 + (n - 1) * CPU_VERIFY_OP_PER_TOKEN
    mem = read + cache / cost.cache_bandwidth(p, dev)
    return max(mem, n * cost.decode_flops(item, position) / cost.flop_rate(p, dev)) + overhead


def verify_seconds(ctx: PlanContext, homes: list[str], hops: int, n: int) -> float:
    """The plan's decode forward of n tokens (a token and its n - 1 drafts)."""
    pos = ctx.position
    return (sum(batch_time(it, h, pos, n, ctx.p) for it, h in zip(ctx.items, homes))
            + hops * cost.decode_hop_time(ctx.p))


def speeds(ctx: PlanContext, homes: list[str], hops: int, mtp_home: str, gpu_fmt: str, a: float,
           ks) -> dict[int, float]:
    """Predicted decode tokens/s for each k in `ks` with the MTP layer on `mtp_home`."""
    p, pos = ctx.p, ctx.position
    layer = mtp_items(ctx, gpu_fmt)
    embed = next(i for i, it in enumerate(ctx.items) if it.kind == "embed")
    head = next(i for i, it in enumerate(ctx.items) if it.kind == "head")
    e_dev, h_dev, m_dev = device_of(homes[embed]), device_of(homes[head]), device_of(mtp_home)
    hop = cost.decode_hop_time(p)
    draft_hops = sum(x != y for x, y in ((e_dev, m_dev), (m_dev, h_dev), (h_dev, e_dev)))
    share = draft_vocab(ctx) / ctx.cfg.vocab_size  # of the head's rows a draft reads
    t_draft = (sum(cost.decode_time(it, mtp_home, pos, p) for it in layer) + share * ctx.decode_s(head, homes[head])
               + ctx.decode_s(embed, homes[embed]) + draft_hops * hop)
    out = {}
    for k in ks:
        if k == 0:
            out[k] = 1.0 / verify_seconds(ctx, homes, hops, 1)
            continue
        E = expected_tokens(a, k)
        accepted = max(E - 1.0, 1.0)  # tokens the catch-up forward runs (at least one row is read)
        t_catchup = (sum(batch_time(it, mtp_home, pos, accepted, p) for it in layer)
                     + ((e_dev != m_dev) + (h_dev != m_dev)) * hop)
        out[k] = E / (k * t_draft + t_catchup + verify_seconds(ctx, homes, hops, k + 1))
    return out


# ---- placement ------------------------------------------------------------------------------------
def _charges(ctx: PlanContext, groups, home: str, fmt: str, k: int) -> dict[str, dict[str, int]]:
    """Bytes by tier and line the MTP layer adds at k drafts: weights + KV on its home, state slots
    next to each DeltaNet state."""
    weights = sum(g.nbytes(fmt) for g in ctx.cfg.mtp_weight_groups())
    out = {home: {"mtp": weights, "mtp_kv": kv_bytes_per_token(ctx) * ctx.p.context}}
    for g in groups:
        if g.cache == "state" and k:
            tier = out.setdefault(g.decode_device, {})
            tier["state_slots"] = tier.get("state_slots", 0) + (k + 1) * g.cache_bytes
    return out


def _fits(tiers: dict, charges: dict) -> bool:
    return all(tiers[t].used_bytes + sum(lines.values()) <= tiers[t].budget_bytes for t, lines in charges.items())


def _candidates(ctx: PlanContext) -> tuple[list[int], str]:
    want = ctx.p.mtp_draft_tokens
    if want == "auto":
        return list(range(MAX_AUTO_DRAFTS + 1)), "auto"
    if want == "on":
        return list(range(1, MAX_AUTO_DRAFTS + 1)), "on"
    return [int(want)], "fixed"


def plan_mtp(ctx: PlanContext, groups: tuple[GroupPlacement, ...], tiers: dict,
             predicted: Prediction) -> tuple[MtpPlacement | None, dict]:
    """The MTP placement for a plan of `groups`, and the tiers with its bytes added when k > 0.
    None (tiers unchanged) when the config has no MTP layer."""
    if not ctx.cfg.mtp_num_hidden_layers:
        return None, tiers
    homes = [g.home for g in groups]
    head = next(g for g in groups if g.kind == "head")
    a = acceptance(ctx)
    ks, mode = _candidates(ctx)
    fmt_of = {"gpu": head.dtype if head.home == "gpu" else ctx.p.gpu_dtype, "cpu": ctx.p.cpu_dtype}
    options = [head.decode_device] + (["cpu"] if head.decode_device != "cpu" else [])
    table = {home: speeds(ctx, homes, predicted.hops_decode, home, fmt_of[home], a,
                          range(max(max(ks), MAX_AUTO_DRAFTS) + 1)) for home in options}
    plain = table[options[0]][0]
    chosen = None  # (home, k)
    for home in options:  # the head's device when any wanted k fits there, else RAM
        fitting = [k for k in ks if k and _fits(tiers, _charges(ctx, groups, home, fmt_of[home], k))]
        if fitting:
            chosen = (home, max(fitting, key=lambda k: (table[home][k], -k)))
            break
    home = chosen[0] if chosen else next((h for h in options if _fits(tiers, _charges(ctx, groups, h, fmt_of[h], 0))),
                                         None)
    k = chosen[1] if chosen else 0
    shown = home or options[0]
    if k and mode == "auto" and table[home][k] <= plain:
        k = 0
    if k:
        reason = (f"k = {k} {'chosen' if mode != 'fixed' else 'set by the profile or --draft-tokens'}: "
                  f"{table[home][k] / plain:.2f}x the decode speed without MTP at acceptance {a:g}")
    elif not ctx.p.mtp_draft_tokens:
        reason = "off: mtp.draft_tokens is 0 (or --no-mtp / --draft-tokens 0)"
    elif chosen is None and any(ks):
        reason = "off: its weights, KV cache and DeltaNet state slots fit no tier the plan leaves room in"
    else:
        best = max(range(1, len(table[shown])), key=lambda j: table[shown][j])
        reason = (f"off: no k pays at acceptance {a:g} (best k = {best}: "
                  f"{table[shown][best] / plain:.2f}x the decode speed without MTP)")
    if k:
        tiers = _add(tiers, _charges(ctx, groups, home, fmt_of[home], k))
    fmt = fmt_of[shown]
    mtp = MtpPlacement(
        home=home, dtype=fmt, bytes=sum(g.nbytes(fmt) for g in ctx.cfg.mtp_weight_groups()),
        cache_bytes=kv_bytes_per_token(ctx) * ctx.p.context,
        state_slot_bytes=(k + 1) * sum(g.cache_bytes for g in groups if g.cache == "state") if k else 0,
        draft_tokens=k, acceptance=a, decode_tokens_per_s=plain,
        decode_tokens_per_s_mtp=table[shown][k], tokens_per_s_by_k=tuple(table[shown][j] for j in sorted(table[shown])),
        reason=reason, draft_vocab=0 if draft_vocab(ctx) == ctx.cfg.vocab_size else draft_vocab(ctx))
    return mtp, tiers


def _add(tiers: dict, charges: dict) -> dict:
    out = dict(tiers)
    for name, lines in charges.items():
        t = out[name]
        merged = dict(t.lines)
        for line, n in lines.items():
            merged[line] = merged.get(line, 0) + n
        out[name] = replace(t, used_bytes=t.used_bytes + sum(lines.values()), lines=merged)
    return out


# ---- room for it --------------------------------------------------------------------------------
def gpu_room(ctx: PlanContext, plan) -> int:
    """VRAM the MTP layer would take at the k its table favours: its weights and KV when the head
    decodes on the GPU, and the state slots of the DeltaNet layers there (all of them: an upper
    bound, as the search may move some to RAM)."""
    m = plan.mtp
    ks, mode = _candidates(ctx)
    by_k = m.tokens_per_s_by_k
    k = ks[0] if mode == "fixed" else max((j for j in ks if j), key=lambda j: by_k[j], default=0)
    if not k:
        return 0
    head = next(g for g in plan.groups if g.kind == "head")
    beside_head = 0
    if head.decode_device == "gpu":
        beside_head = sum(g.nbytes(head.dtype) for g in ctx.cfg.mtp_weight_groups()) + m.cache_bytes
    return beside_head + (k + 1) * ctx.cfg.deltanet_state_bytes()


def objective_with_mtp(ctx: PlanContext, plan) -> float:
    """The workload turn's seconds with MTP at the plan's k: prefill + output_tokens / tokens/s."""
    speed = plan.mtp.decode_tokens_per_s_mtp if plan.mtp is not None else plan.predicted.decode_tokens_per_s
    return plan.predicted.prefill_s + ctx.p.output_tokens / speed


def with_room_for_mtp(ctx: PlanContext, plan, replan, rebuild):
    """`plan`, or one searched with VRAM left for the MTP layer beside the head when that makes the
    turn faster. The search does not see the MTP layer, so a plan that fills the GPU leaves it no room
    there (nor for the GPU's DeltaNet state slots): `replan(ctx)` searches again with the room taken
    off gpu.vram, `rebuild(ctx, plan)` re-prices that plan's homes under the real budget."""
    m = plan.mtp
    head = next(g for g in plan.groups if g.kind == "head")
    if m is None or not any(g.home == "gpu" for g in plan.groups):
        return plan
    if m.draft_tokens and (m.home == "gpu" or head.decode_device != "gpu"):
        return plan  # on, beside the head

    room = gpu_room(ctx, plan)
    if not room or ctx.p.vram - room <= ctx.p.gpu_reserve:
        return plan
    from ..errors import PlanError
    try:
        roomy = replan(PlanContext(ctx.cfg, ctx.p.replace(vram=ctx.p.vram - room), ctx.model))
    except PlanError:
        return plan
    roomy = rebuild(ctx, roomy)
    if not roomy.fits:
        return plan
    insisted = ctx.p.mtp_draft_tokens not in ("auto", 0)  # --mtp / a fixed k: a plan where it runs
    if insisted and not m.draft_tokens and roomy.mtp.draft_tokens:
        return roomy
    if objective_with_mtp(ctx, roomy) < objective_with_mtp(ctx, plan) * (1 - 1e-9):
        return roomy
    return plan


def with_request(profile, mtp: bool | None, draft_tokens: int | None):
    """The profile with `--mtp/--no-mtp` and `--draft-tokens K` applied to its `mtp.draft_tokens`:
    --no-mtp or K = 0 turns MTP off, K fixes k, --mtp alone asks for the best k >= 1 (unless the
    profile fixes one)."""
    if mtp is False or draft_tokens == 0:
        return profile.replace(mtp_draft_tokens=0)
    if draft_tokens:
        return profile.replace(mtp_draft_tokens=draft_tokens)
    if mtp and profile.mtp_draft_tokens in ("auto", 0):
        return profile.replace(mtp_draft_tokens="on")
    return profile
