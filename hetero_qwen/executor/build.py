"""Load a checkpoint to a plan, in three stages, and hand back the runner.

  1. weights.WeightPlacer  : every group's matrices straight from the mapped file to their home tier
  2. ops.OpBuilder         : each group's op, one variant per device the plan runs it on
  3. bind                  : page-lock the streamed weights' arena, the prefetcher's staging slots
                             (sized to the streamed groups), and the one-token CPU fast path
The plan (`hetero_qwen.planner.plan.GroupPlacement` per group) decides every home, format, device
and crossover; these stages carry it out.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..checkpoint import Checkpoint
from ..planner.plan import device_of
from .devices import Devices
from .ops import OpBuilder
from .runner import LayerSlots, Runner
from .streaming import Prefetcher
from .weights import PackedEmbedding, PlacedGroup, WeightPlacer


def _kernels():
    """The CPU kernel package, or None when it is not importable (plain torch then)."""
    try:
        from .. import kernels
        return kernels
    except ImportError:
        return None


def build_runner(ckpt: Checkpoint, placements: dict, devices: Devices, dtype: torch.dtype,
                 on_loaded: Callable[[str], None] = lambda name: None) -> Runner:
    cfg = ckpt.cfg
    kernels = _kernels()
    placer = WeightPlacer(ckpt, devices, dtype, kernels)
    streams = any(p.prefill_device != p.decode_device for p in placements.values())
    builder = OpBuilder(placer, Prefetcher(devices) if streams else None)
    groups = {g.name: g for g in cfg.weight_groups()}

    embed_g = groups[f"{cfg.text_prefix}embed_tokens"]
    ep = placements[embed_g.name]
    embed = placer.place(embed_g, ep).matrices["weight"]
    if not isinstance(embed, torch.Tensor):  # an int8/int4 embedding: rows dequantized per lookup
        embed = PackedEmbedding(embed)
    on_loaded(embed_g.name)

    layers = []
    for i in range(cfg.num_hidden_layers):
        slots = []
        for g in (groups[f"{cfg.layer_prefix(i)}{cfg.mixer_name(i)}"], groups[f"{cfg.layer_prefix(i)}mlp"]):
            p = placements[g.name]
            slots.append(builder.slot(g, p, placer.place(g, p)))
            on_loaded(g.name)
        layers.append(LayerSlots(cfg.layer_types[i], *slots))

    head_g = groups["lm_head"]
    hp = placements[head_g.name]
    if cfg.tie_word_embeddings and "lm_head.weight" not in ckpt:
        if device_of(hp.home) == device_of(ep.home) and hp.dtype == ep.dtype:  # shared: the embedding's own weight
            head_placed = PlacedGroup({"weight": embed.packed if isinstance(embed, PackedEmbedding) else embed})
        else:  # on the other device or in another format: its own copy (the plan counts the head's bytes)
            head_placed = placer.place(embed_g, hp)
    else:
        head_placed = placer.place(head_g, hp)
    head = builder.slot(head_g, hp, head_placed)
    on_loaded(head_g.name)

    runner = Runner(cfg, embed, devices[device_of(ep.home)], layers, head, dtype, devices)
    runner.disk, runner.host_arena = placer.disk, placer.arena
    if builder.prefetcher is not None and builder.prefetcher.groups:
        for used in placer.streamed_arena.used():  # exact size: no power-of-two rounding
            devices.lock_host(used)
        builder.prefetcher.allocate()
        runner.prefetcher = builder.prefetcher
    if kernels is not None:
        from .cpu_decode import CpuDecodePath
        runner.cpu_decode = CpuDecodePath.build(runner)
    return runner
