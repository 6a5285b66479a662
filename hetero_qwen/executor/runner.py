"""The runner: the only code that knows devices while the model runs.

It runs the model's ops in order, each where its slot says (decode device, or the prefill device
from the crossover on), moves the hidden state only where consecutive ops change device, drives the
prefetcher for streamed blocks, takes the one-token CPU fast path where a layer allows it, and
keeps the accounting (busy time per device, the working-set hook).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from ..config import FULL, ModelConfig
from ..model.layers import rms_norm
from ..model.qwen3_5 import new_cache
from ..model.mrope import MRope
from ..model.rope import Rope
from ..model.scratch import op_scope
from .devices import Device, Devices


@dataclass
class OpSlot:
    name: str                               # weight group name, e.g. model.layers.3.mlp
    ops: dict[str, Callable]                # device name -> op with its weights on that device
    norms: dict[str, torch.Tensor]          # device name -> norm weight applied to the op's input
    decode_device: str = "cpu"
    prefill_device: str = "cpu"
    crossover: int | None = None            # T >= crossover runs on prefill_device (from the plan)
    streamed: frozenset = frozenset()       # devices whose variant reads weights from staging slots
    packed_in: object | None = None         # CPU: the mixer's input projections as one kernel (PACKED_MODULES)

    def device_for(self, T: int) -> str:
        if self.prefill_device != self.decode_device and self.crossover is not None and T >= self.crossover:
            return self.prefill_device
        return self.decode_device


@dataclass
class LayerSlots:
    kind: str       # "full_attention" | "linear_attention"
    mixer: OpSlot
    ffn: OpSlot


class Runner:
    def __init__(self, cfg: ModelConfig, embed, embed_device: Device, layers: list[LayerSlots], head: OpSlot,
                 dtype: torch.dtype, devices: Devices):
        self.cfg, self.embed, self.embed_device = cfg, embed, embed_device  # embed [V, H] on embed_device
        self.layers, self.head, self.dtype, self.devices = layers, head, dtype, devices
        self.prefetcher = None      # streaming.Prefetcher when anything streams
        self.op_hook: Callable | None = None  # (slot name, device, input, output) -> None: accounting
        self.cpu_decode = None      # cpu_decode.CpuDecodePath: the CPU fast path for decode and verify
        self.host_arena = None      # host_arena.HostArena holding CPU-resident weights
        self.disk = None            # devices.MemoryTier of memory-mapped weights
        self._ropes: dict[str, Rope] = {}
        self.image_token_id = -1                 # placeholder id whose embeddings image rows replace
        self.mrope_section: tuple | None = None  # the checkpoint's M-RoPE sections (image prompts)
        self._mropes: dict[str, MRope] = {}

    # ---- caches ------------------------------------------------------------------------------
    def cache_device(self, i: int) -> Device:
        """A layer's KV cache / DeltaNet state lives with its mixer's decode device."""
        return self.devices[self.layers[i].mixer.decode_device]

    def new_caches(self, batch: int, capacity: int, kv_dtype: torch.dtype | None = None) -> list:
        """One cache per layer, charged to its device's budget up front."""
        caches = []
        for i, layer in enumerate(self.layers):
            dev = self.cache_device(i)
            c = new_cache(self.cfg, layer.kind, batch, capacity, kv_dtype or self.dtype, dev.torch)
            dev.memory.alloc(c.nbytes(), f"{layer.mixer.name} cache")
            c.owner = dev  # so release_caches can give the bytes back
            if hasattr(c, "on_grow"):  # a DeltaNet state's verify slots (speculative decoding), when made
                c.on_grow = lambda n, dev=dev, name=layer.mixer.name: dev.memory.alloc(n, f"{name} cache")
            caches.append(c)
        return caches

    def release_caches(self, caches: list) -> None:
        for layer, c in zip(self.layers, caches):
            c.owner.memory.free(c.nbytes(), f"{layer.mixer.name} cache")

    # ---- one forward -------------------------------------------------------------------------
    def _cos_sin(self, dev: Device, start: int, T: int, tables: dict,
                 positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin [T, rotary_dim] for this forward on `dev`: built once per forward and device.
        `positions` [3, T] (M-RoPE, a chunk holding images) replaces start.. when given."""
        if dev.name not in tables and positions is not None:
            if dev.name not in self._mropes:
                self._mropes[dev.name] = MRope(self.cfg, self.mrope_section or (11, 11, 10), dev.torch)
            tables[dev.name] = self._mropes[dev.name].cos_sin(positions, self.dtype)
        elif dev.name not in tables:
            if dev.name not in self._ropes:
                self._ropes[dev.name] = Rope(self.cfg, dev.torch)
            positions = torch.arange(start, start + T, device=dev.torch)  # made there: no host copy
            tables[dev.name] = self._ropes[dev.name].cos_sin(positions, self.dtype)
        return tables[dev.name]

    def _run(self, slot: OpSlot, x: torch.Tensor, cur: Device, T: int, *args):
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

    def _begin_streaming(self, T: int, with_head: bool, last_only: bool) -> None:
        """Tell the prefetcher which streamed blocks this forward computes on the GPU, in order."""
        slots = [s for layer in self.layers for s in (layer.mixer, layer.ffn)]
        order = [s.name for s in slots if s.device_for(T) in s.streamed]
        if with_head and self.head.device_for(1 if last_only else T) in self.head.streamed:
            order.append(self.head.name)
        self.prefetcher.begin(order)

    def _fast_path(self, B: int, T: int, images: bool = False):
        """The CPU fast path for a forward of one sequence's T tokens (up to its max_tokens), or None."""
        if images:  # explicit M-RoPE positions or image rows: the generic path takes them
            return None
        hook_ok = self.op_hook is None or getattr(self.op_hook, "gpu_only", False)  # fast layers are CPU-only
        fast = self.cpu_decode
        if B == 1 and hook_ok and fast is not None and T <= fast.max_tokens and fast.enabled():
            return fast
        return None

    def _fast_head(self, x32, T: int) -> bool:
        """Whether the head can read the fast path's fp32 residual (it decodes on the CPU at T)."""
        return x32 is not None and self.cpu_decode.head is not None and self.head.device_for(T) == "cpu"

    def hidden(self, ids: torch.Tensor, caches: list, start: int, with_head: bool = False, last_only: bool = False,
               positions: torch.Tensor | None = None, image_rows: torch.Tensor | None = None):
        """ids [B, T] at positions start.. -> (hidden, its device, fp32 residual or None).

        `start` is the rotary position of the first token (token count + the session's rope delta
        after an image). A chunk holding image tokens passes `positions` [3, T] (M-RoPE) and
        `image_rows` [n, H], the tower's output for its n placeholder tokens (B = 1), which replace
        their embeddings. The hidden state is before the final norm, [B, T', H]; when the last
        layers ran on the CPU fast path, the fp32 residual [T, H] they kept is returned too (the
        fast head reads it)."""
        B, T = ids.shape
        x = self.embed[ids.to(self.embed.device)].to(self.dtype)
        if image_rows is not None and image_rows.shape[0]:
            mask = (ids == self.image_token_id).to(x.device)
            x[mask] = image_rows.to(x.device, x.dtype)
        cur = self.embed_device
        if self.prefetcher is not None:
            self._begin_streaming(T, with_head, last_only)
        tables: dict = {}
        fast = self._fast_path(B, T, positions is not None or image_rows is not None)
        x32 = None  # the fp32 residual while consecutive layers take the fast path
        for i, (layer, cache) in enumerate(zip(self.layers, caches)):
            run = fast.layers[i] if fast is not None else None
            if run is not None and not layer.mixer.device_for(T) == layer.ffn.device_for(T) == "cpu":
                run = None  # past a crossover: this forward runs the layer where prefill does
            if run is not None:
                cpu = self.devices.cpu
                if x32 is None:
                    x = self.devices.hop(x, cur, cpu)
                    cur = cpu
                    x32 = x.reshape(T, -1).float().clone()
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
                out, cur, x = self._run(layer.mixer, x, cur, T, cache, *self._cos_sin(dev, start, T, tables, positions))
            else:
                out, cur, x = self._run(layer.mixer, x, cur, T, cache)
            x = x + out
            out, cur, x = self._run(layer.ffn, x, cur, T)
            x = x + out
        if x32 is not None:
            x = x32.to(self.dtype).view(B, T, -1)
        if last_only:
            x = x[:, -1:]
        return x, cur, x32

    def forward(self, ids: torch.Tensor, caches: list, start: int, last_only: bool = False,
                positions: torch.Tensor | None = None, image_rows: torch.Tensor | None = None) -> torch.Tensor:
        """Logits fp32 [B, T, vocab] (or [B, 1, vocab] with last_only), on the CPU."""
        x, cur, x32 = self.hidden(ids, caches, start, with_head=True, last_only=last_only,
                                  positions=positions, image_rows=image_rows)
        if self._fast_head(x32, x.shape[1]):  # the fast path ran up to here
            t0 = time.perf_counter()
            logits = self.cpu_decode.logits(x32[-1:] if last_only else x32)
            self.devices.cpu.busy_seconds += time.perf_counter() - t0
            return logits.view(1, logits.shape[0], -1)
        logits, dev, _ = self._run(self.head, x, cur, x.shape[1])
        return self.devices.logits_to_host(logits, dev)

    def forward_hidden(self, ids: torch.Tensor, caches: list, start: int, last_only: bool = False):
        """As `forward`, plus the hidden state after the final norm for every position [B, T, H], on
        the head's device (what the MTP layer reads)."""
        x, cur, x32 = self.hidden(ids, caches, start, with_head=True)
        T = x.shape[1]
        if self._fast_head(x32, T):  # the same head as `forward`'s: verify and decode logits agree
            t0 = time.perf_counter()
            logits, normed = self.cpu_decode.logits_and_normed(x32, last_only)
            self.devices.cpu.busy_seconds += time.perf_counter() - t0
            return logits.view(1, logits.shape[0], -1), normed.to(self.dtype).view(1, T, -1)  # the head runs where a T-token forward runs it (what the prefetcher was told)
        dev = self.devices[self.head.device_for(T)]
        x = self.devices.hop(x, cur, dev)
        normed = rms_norm(x, self.head.norms[dev.name], self.cfg.rms_norm_eps)
        logits, _, _ = self._run(self.head, x[:, -1:] if last_only else x, dev, T)
        return self.devices.logits_to_host(logits, dev), normed

    def prefill_only(self, ids: torch.Tensor, caches: list, start: int,
                     positions: torch.Tensor | None = None, image_rows: torch.Tensor | None = None) -> None:
        """Fill the caches without computing logits (all but the last prefill chunk): the head is
        neither run nor prefetched."""
        self.hidden(ids, caches, start, positions=positions, image_rows=image_rows)
