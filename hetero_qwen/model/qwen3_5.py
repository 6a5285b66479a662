"""Qwen3.5/3.6 hybrid text model (`model_type: qwen3_5`): embed -> layers -> norm -> lm_head.

Each layer: x += mixer(norm(x)); x += ffn(norm(x)), the mixer being Gated DeltaNet or gated
full attention. Every op sits in an `OpSlot` that holds one variant per device it may run on
(weights and norm already there) and says which device runs it for a forward of T tokens.
The forward loop moves the hidden state only where consecutive ops change device.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..config import FULL, ModelConfig
from ..executor.devices import Device, Devices
from .cache import DeltaNetCache, KVCache
from .layers import rms_norm
from .rope import Rope
from .scratch import op_scope


@dataclass
class OpSlot:
    name: str                               # weight group name, e.g. model.layers.3.mlp
    ops: dict[str, Callable]                # device name -> op with its weights on that device
    norms: dict[str, torch.Tensor]          # device name -> norm weight applied to the op's input
    decode_device: str = "cpu"
    prefill_device: str = "cpu"
    crossover: int | None = None            # T >= crossover runs on prefill_device
    streamed: frozenset = frozenset()       # devices whose variant reads weights from staging slots

    def device_for(self, T: int) -> str:
        if self.prefill_device != self.decode_device and self.crossover is not None and T >= self.crossover:
            return self.prefill_device
        return self.decode_device


@dataclass
class Layer:
    kind: str       # "full_attention" | "linear_attention"
    mixer: OpSlot
    ffn: OpSlot


@dataclass
class Qwen35Model:
    cfg: ModelConfig
    embed: torch.Tensor                     # [V, H] on embed_device
    embed_device: Device
    layers: list[Layer]
    head: OpSlot                            # final norm + lm_head
    dtype: torch.dtype
    devices: Devices
    prefetcher: object | None = None        # executor.streaming.Prefetcher when anything streams
    op_hook: Callable | None = None         # (slot name, device, input, output) -> None: accounting
    cpu_decode: object | None = None        # executor.cpu_decode.CpuDecodePath: one-token CPU fast path
    host_arena: object | None = None        # executor.host_arena.HostArena holding CPU-resident weights
    _ropes: dict = field(default_factory=dict)
    _head_fast: bool = False                # set by forward() for hidden(): logits will follow
    _x32: torch.Tensor | None = None

    def rope(self, dev: Device) -> Rope:
        if dev.name not in self._ropes:
            self._ropes[dev.name] = Rope(self.cfg, dev.torch)
        return self._ropes[dev.name]

    def cache_device(self, i: int) -> Device:
        """A layer's KV cache / DeltaNet state lives with its mixer's decode device."""
        return self.devices[self.layers[i].mixer.decode_device]

    def new_caches(self, batch: int, capacity: int, kv_dtype: torch.dtype | None = None) -> list:
        """One cache per layer, charged to its device's budget up front."""
        cfg = self.cfg
        caches = []
        for i, layer in enumerate(self.layers):
            dev = self.cache_device(i)
            if layer.kind == FULL:
                c = KVCache(batch, cfg.num_key_value_heads, cfg.head_dim, capacity, kv_dtype or self.dtype, dev.torch)
            else:
                c = DeltaNetCache(batch, cfg.linear_conv_dim, cfg.linear_conv_kernel_dim, cfg.linear_num_value_heads,
                                  cfg.linear_key_head_dim, cfg.linear_value_head_dim, self.dtype, dev.torch)
            dev.memory.alloc(c.nbytes(), f"{layer.mixer.name} cache")
            c.owner = dev  # so release_caches can give the bytes back
            caches.append(c)
        return caches

    def release_caches(self, caches: list) -> None:
        for layer, c in zip(self.layers, caches):
            c.owner.memory.free(c.nbytes(), f"{layer.mixer.name} cache")

    def _run(self, slot: OpSlot, x: torch.Tensor, cur: Device, T: int, *args) -> tuple[torch.Tensor, Device, torch.Tensor]:
        """Run one op where its slot says: (op output, device it ran on, x moved there)."""
        dev = self.devices[slot.device_for(T)]
        x = self.devices.hop(x, cur, dev)
        h = rms_norm(x, slot.norms[dev.name], self.cfg.rms_norm_eps)
        streamed = dev.name in slot.streamed
        with dev.busy():  # CUDA events on a real GPU
            if streamed:
                self.prefetcher.acquire(slot.name)
            with op_scope(self.op_hook, slot.name, dev, h):  # charges the op's declared temporaries
                out = slot.ops[dev.name](h, *args)
            if streamed:
                self.prefetcher.release(slot.name)
        if self.op_hook is not None:
            self.op_hook(slot.name, dev, h, out)
        return out, dev, x

    def hidden(self, ids: torch.Tensor, caches: list, start: int, last_only: bool = False):
        """ids [B, T] at positions start.. -> (hidden before the final norm [B, T', H], its device)."""
        B, T = ids.shape
        x = self.embed[ids.to(self.embed.device)].to(self.dtype)
        cur = self.embed_device
        if self.prefetcher is not None:
            order = [s.name for layer in self.layers for s in (layer.mixer, layer.ffn)] + [self.head.name]
            slots = {s.name: s for layer in self.layers for s in (layer.mixer, layer.ffn)} | {self.head.name: self.head}
            rows = {n: (1 if last_only and n == self.head.name else T) for n in order}
            self.prefetcher.begin([n for n in order if slots[n].device_for(rows[n]) in slots[n].streamed])
        positions = torch.arange(start, start + T)
        hook_ok = self.op_hook is None or getattr(self.op_hook, "gpu_only", False)  # fast layers are CPU-only
        fast = self.cpu_decode if (T == 1 and B == 1 and hook_ok and self.cpu_decode is not None
                                   and self.cpu_decode.enabled()) else None
        x32 = None  # the fp32 residual while consecutive layers take the fast path
        for i, (layer, cache) in enumerate(zip(self.layers, caches)):
            run = fast.layers[i] if fast is not None else None
            if run is not None:
                cpu = self.devices.cpu
                if x32 is None:
                    x = self.devices.hop(x, cur, cpu)
                    cur = cpu
                    x32 = x.reshape(1, -1).float().clone()
                t0 = time.perf_counter()
                is_full, mixer, ffn = run
                if is_full:
                    mixer(x32, cache, start)
                else:
                    mixer(x32, cache)
                ffn(x32)
                cpu.busy_seconds += time.perf_counter() - t0
                continue
            if x32 is not None:
                x, x32 = x32.to(self.dtype).view(B, T, -1), None
            if layer.kind == FULL:
                dev = self.devices[layer.mixer.device_for(T)]
                cos, sin = self.rope(dev).cos_sin(positions, self.dtype)
                out, cur, x = self._run(layer.mixer, x, cur, T, cache, cos, sin)
            else:
                out, cur, x = self._run(layer.mixer, x, cur, T, cache)
            x = x + out
            out, cur, x = self._run(layer.ffn, x, cur, T)
            x = x + out
        if x32 is not None:
            if fast.head is not None and self._head_fast:
                self._x32 = x32  # forward() takes the fp32 residual straight to the fast head
            x = x32.to(self.dtype).view(B, T, -1)
        if last_only:
            x = x[:, -1:]
        return x, cur

    def forward(self, ids: torch.Tensor, caches: list, start: int, last_only: bool = False) -> torch.Tensor:
        """Logits fp32 [B, T, vocab] (or [B, 1, vocab] with last_only), on the CPU."""
        self._head_fast, self._x32 = True, None
        try:
            x, cur = self.hidden(ids, caches, start, last_only)
            if self._x32 is not None:  # the one-token CPU fast path ran up to here
                t0 = time.perf_counter()
                logits = self.cpu_decode.logits(self._x32)
                self.devices.cpu.busy_seconds += time.perf_counter() - t0
                return logits.view(1, 1, -1)
        finally:
            self._head_fast, self._x32 = False, None
        logits, dev, _ = self._run(self.head, x, cur, x.shape[1])
        return self.devices.logits_to_host(logits, dev)

    def prefill_only(self, ids: torch.Tensor, caches: list, start: int) -> None:
        """Fill the caches without computing logits (all but the last prefill chunk)."""
        self.hidden(ids, caches, start)
