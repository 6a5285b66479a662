"""The MTP layer placed and run: its weights loaded where the plan's `mtp` says (planner/mtp.py:
where the head decodes when it fits, every draft ending in the head; else RAM), and the draft forward.

Plans saved before the planner placed the MTP layer have no `mtp`: for them it follows the head's
placement when its weights and KV cache fit what the plan left free on that device, else RAM in the
plan's CPU format. Its bytes are charged to its device's budget when loaded.
"""

from __future__ import annotations

import dataclasses

import torch

from ..checkpoint import Checkpoint
from ..config import FULL
from ..model.layers import TorchLinear
from ..model.mtp import MtpLayer
from ..model.qwen3_5 import new_cache
from ..model.rope import Rope
from .devices import Device
from .ops import OpBuilder
from .runner import Runner
from .weights import WeightPlacer, storage_format


class MtpDrafter:
    """Runs the MTP layer after the model: `forward(tokens, hidden, start, cache)`, with the
    runner's embedding and head (the model's own: the MTP has none)."""

    def __init__(self, runner: Runner, layer: MtpLayer, device: Device):
        self.runner, self.layer, self.device = runner, layer, device
        self.cfg = runner.cfg
        head_dev = runner.head.decode_device  # the head without the model's final norm (MTP has its own)
        self.head_device, self.head = runner.devices[head_dev], runner.head.ops[head_dev]
        self._rope = Rope(self.cfg, device.torch)
        self.cpu_path = None  # cpu_mtp.CpuMtpPath when the layer and head run on the CPU's C++ kernels
        self.draft_vocab = None  # drafts pick among token ids < this (set_draft_vocab); None: all
        self.draft_head = None   # the head's first draft_vocab rows, where its layout allows a view

    def set_draft_vocab(self, n: int | None) -> None:
        """Drafts pick among token ids < n (the plan's mtp.draft_vocab; 0 or None: all of them). The
        other logits of a draft are -inf; the verify forward still scores the whole vocabulary."""
        from .draft_head import first_rows, first_rows_kernel
        V = self.cfg.vocab_size
        self.draft_vocab = n if n and n < V else None
        self.draft_head = first_rows(self.head, n) if self.draft_vocab else None
        if self.cpu_path is not None:
            self.cpu_path.set_head(first_rows_kernel(self.cpu_path.full_head, n) if self.draft_vocab
                                   else self.cpu_path.full_head)

    def _padded(self, part: torch.Tensor) -> torch.Tensor:
        """fp32 logits [n] of the first n ids -> [V] with -inf past them."""
        if self.draft_vocab is None or part.shape[-1] == self.cfg.vocab_size:
            return part
        full = torch.full((self.cfg.vocab_size,), float("-inf"))
        full[:part.shape[-1]] = part
        return full

    def new_cache(self, capacity: int):
        c = new_cache(self.cfg, FULL, 1, capacity, self.runner.dtype, self.device.torch)
        self.device.memory.alloc(c.nbytes(), "mtp cache")
        return c

    def release_cache(self, cache) -> None:
        self.device.memory.free(cache.nbytes(), "mtp cache")

    def forward(self, tokens: list[int], hidden: torch.Tensor, start: int, cache, logits: bool = True):
        """Pairs (h_p, x_{p+1}) for p = start.. : `hidden` [T, H], `tokens` the T next tokens ->
        (MTP hidden [T, H] on its device, fp32 logits [V] of the last pair on the CPU, or None)."""
        dev, runner = self.device, self.runner
        if self.cpu_path is not None and self.cpu_path.takes(len(tokens)):
            emb = runner.embed[torch.tensor(tokens, device=runner.embed.device)].to("cpu")
            out, lg = self.cpu_path(emb, hidden.to("cpu").view(len(tokens), -1), start, cache, logits)
            return out, (None if lg is None else self._padded(lg))
        ids = torch.tensor([tokens])
        emb = runner.embed[ids.to(runner.embed.device)].to(runner.dtype)
        emb = runner.devices.hop(emb, runner.embed_device, dev)
        hidden = hidden.to(dev.torch).view(1, len(tokens), -1)
        positions = torch.arange(start, start + len(tokens), device=dev.torch)
        cos, sin = self._rope.cos_sin(positions, runner.dtype)
        out = self.layer(emb, hidden, cache, cos, sin)[0]
        if not logits:
            return out, None
        last = runner.devices.hop(out[-1:], dev, self.head_device)
        head = self.draft_head if self.draft_head is not None else self.head
        lg = head(last).float().to("cpu")[0]
        return out, self._padded(lg[:self.draft_vocab] if self.draft_vocab else lg)


def planned_placement(plan, head_placement):
    """The plan's MTP placement as a group placement to load (None: the plan turns MTP off, or no
    tier had room), or the heuristic below for an old plan without `mtp`."""
    m = plan.mtp
    if m is None or m.home is None or not m.draft_tokens:
        return None
    return dataclasses.replace(head_placement, name="mtp", kind="mtp_fc", layer=None, bytes=m.bytes,
                               dtype=m.dtype, home=m.home, decode_device=m.home, prefill_device=m.home,
                               stream_prefill=False, crossover_tokens=None, cache=None, cache_bytes=0)


def mtp_placement(cfg, plan, head_placement, context: int, dtype: torch.dtype):
    """Where the MTP layer goes: the plan's `mtp` when it has one (see planned_placement); for a
    plan saved before the planner placed it, the head's placement when its weights and KV cache fit
    what the plan leaves free on the head's tier, else RAM in the plan's CPU format when they fit
    there, else None (MTP off: nothing fits)."""
    if getattr(plan, "mtp", None) is not None:
        return planned_placement(plan, head_placement)
    cache = cfg.kv_bytes_per_token(dtype.itemsize) // max(1, len(cfg.full_attention_layers)) * context
    groups = cfg.mtp_weight_groups()

    def fits(tier: str, fmt: str) -> bool:
        t = plan.tiers.get(tier)
        need = sum(g.nbytes(fmt) for g in groups) + cache
        return t is None or t.used_bytes + need <= t.budget_bytes

    def fmt_of(p) -> str:
        return "fp32" if dtype == torch.float32 and p.dtype in ("bf16", "fp32") else p.dtype

    if head_placement.home in ("gpu", "cpu") and fits(head_placement.home, fmt_of(head_placement)):
        return head_placement
    cpu_fmt = next((g.dtype for g in plan.groups if g.home == "cpu"), head_placement.dtype)
    cpu = dataclasses.replace(head_placement, home="cpu", decode_device="cpu", prefill_device="cpu", dtype=cpu_fmt)
    return cpu if fits("cpu", fmt_of(cpu)) else None


def build_mtp(ckpt: Checkpoint, runner: Runner, head_placement, kernels) -> MtpDrafter:
    """Load the `mtp.*` groups in `head_placement` (see mtp_placement) and bind them to the runner."""
    cfg, devices, dtype = ckpt.cfg, runner.devices, runner.dtype
    placer = WeightPlacer(ckpt, devices, dtype, kernels)
    builder = OpBuilder(placer, None)
    dev_name = head_placement.decode_device
    projs, vectors, ops, slots = {}, {}, {}, {}
    for g in cfg.mtp_weight_groups()[:3]:  # fc + layer 0 (the one layer Qwen3.5/3.6 ship)
        p = dataclasses.replace(head_placement, name=g.name, kind=g.kind, layer=None, bytes=g.nbytes(),
                                prefill_device=dev_name, stream_prefill=False, crossover_tokens=None)
        placed = placer.place(g, p)
        if g.kind == "mtp_fc":
            if dev_name == "gpu":
                fc = {k: TorchLinear(w) for k, w in placed.matrices.items()}
            else:
                fc = builder._cpu_projections(g, p, storage_format(p), placed.matrices)
            projs.update(fc)
            vectors.update(placer.vectors_on(g, dev_name))
            continue
        slot = builder.slot(g, p, placed)
        op = slot.ops[dev_name]
        norm_name = "input_layernorm.weight" if g.kind == "attention" else "post_attention_layernorm.weight"
        vectors[norm_name] = slot.norms[dev_name]
        ops[g.kind], slots[g.kind] = op, slot
    layer = MtpLayer(cfg, projs["fc.weight"], ops["attention"], ops["ffn"], vectors)
    drafter = MtpDrafter(runner, layer, devices[dev_name])
    if dev_name == "cpu" and drafter.head_device.name == "cpu":
        from .cpu_mtp import CpuMtpPath
        drafter.cpu_path = CpuMtpPath.build(cfg, projs["fc.weight"], slots["attention"], slots["ffn"], vectors,
                                            drafter.head)
    return drafter
