"""Streaming off-GPU weight groups to the GPU through double-buffered staging slots.

For a forward that computes CPU-resident blocks on the GPU (prefill above the crossover), the
blocks are copied in execution order into two staging slots on the GPU, sized to the largest
streamed block. Block i+1's copy is issued before block i's compute starts, so the copy engine
and the GPU overlap; a slot is refilled only after the compute that reads it has finished.

Real CUDA: a dedicated copy stream, `non_blocking` copies, and events between the copy and
compute streams. Sources in page-locked memory (the streamed-weights arena, registered once) are
copied straight; others (memory-mapped disk-tier blocks, a tied head sharing the embedding) go
through two page-locked bounce buffers (the plan's `cpu.pinned_staging`), since an asynchronous
copy from pageable memory would serialise with compute. Simulated GPU: a one-thread copy worker plays the copy
stream, and an instrumented `timeline` records when each copy and compute starts and ends, so
tests can check the overlap logic without a GPU.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from .devices import Devices
from .host_arena import HostArena

ALIGN = 256  # bytes: every tensor in a slot starts on a 256-byte boundary


class StagedGroup:
    """A streamed group's host tensors and where each one sits inside a staging slot."""

    def __init__(self, name: str, tensors: dict[str, torch.Tensor], locked: dict[str, bool] | None = None):
        self.name = name
        self.tensors = tensors
        self.locked = locked or {k: False for k in tensors}  # page-locked source: copied without a bounce
        self.offsets: dict[str, int] = {}
        off = 0
        for local, t in tensors.items():
            self.offsets[local] = off
            off += -(-t.numel() * t.element_size() // ALIGN) * ALIGN
        self.nbytes = off

    def views(self, slot: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for local, t in self.tensors.items():
            n = t.numel() * t.element_size()
            out[local] = slot[self.offsets[local]:self.offsets[local] + n].view(t.dtype).view(t.shape)
        return out


class Prefetcher:
    """Build: `add` each streamed group, then `allocate` the slots (sized to the largest group)."""

    def __init__(self, devices: Devices, n_slots: int = 2):
        self.devices = devices
        self.gpu = devices.gpu
        self.groups: dict[str, StagedGroup] = {}
        self.n_slots = n_slots
        self.slots: list[torch.Tensor] = []
        self.bounce: list[torch.Tensor] | None = None  # page-locked host copies of the slots, if needed
        self.bounced_bytes = 0
        self.timeline: list[tuple[float, str, str]] = []
        self._lock = threading.Lock()
        self.current: dict[str, dict[str, torch.Tensor]] = {}
        if self.gpu.is_cuda:
            self.copy_stream = torch.cuda.Stream(device=self.gpu.torch)
            self._slot_free = [None] * n_slots  # cuda events: compute finished reading the slot
            self._bounce_read = [None] * n_slots  # cuda events: the copy out of a bounce buffer finished
        else:
            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hq-copy")
        self._order: list[str] = []
        self._next = 0
        self._pending: dict[str, tuple[int, object]] = {}  # name -> (slot, event | future)

    def add(self, name: str, tensors: dict[str, torch.Tensor]) -> None:
        self.groups[name] = StagedGroup(name, tensors)

    def allocate(self) -> None:
        """The slots, once every streamed group is added and its host memory page-locked."""
        for g in self.groups.values():
            g.locked = {k: self.devices.is_locked(t) for k, t in g.tensors.items()}
        slot_bytes = max(g.nbytes for g in self.groups.values())
        for i in range(self.n_slots):
            self.gpu.memory.alloc(slot_bytes, f"staging slot {i}")
            self.slots.append(torch.empty(slot_bytes, dtype=torch.uint8, device=self.gpu.torch))
        if not all(all(g.locked.values()) for g in self.groups.values()):
            arena = HostArena(slot_bytes)
            self.devices.cpu.memory.alloc(self.n_slots * slot_bytes, "pinned staging")
            self.bounce = [arena.empty((slot_bytes,), torch.uint8) for _ in range(self.n_slots)]
            for b in self.bounce:
                self.devices.lock_host(b)
        self.slot_bytes = slot_bytes

    def _source(self, group: StagedGroup, local: str, slot_idx: int, bounce: dict | None) -> torch.Tensor:
        """The tensor to copy from: the source itself when page-locked, else its bounce copy."""
        src = group.tensors[local]
        if group.locked[local]:
            return src
        b = bounce[local]
        b.copy_(src)  # a CPU copy into page-locked memory
        self.bounced_bytes += src.numel() * src.element_size()
        return b

    def mark(self, event: str, name: str) -> None:
        with self._lock:
            self.timeline.append((time.perf_counter(), event, name))

    # ---- schedule --------------------------------------------------------------------------
    def begin(self, order: list[str]) -> None:
        """Start a forward that will compute `order` (group names) on the GPU from staging."""
        self._order, self._next, self._pending = list(order), 0, {}
        for _ in range(min(len(self.slots), len(order))):
            self._issue(self._next % len(self.slots))

    def _issue(self, slot_idx: int) -> None:
        name = self._order[self._next]
        self._next += 1
        group = self.groups[name]
        dst = self.slots[slot_idx]
        self.devices.traffic.h2d += group.nbytes
        self.devices.traffic.streamed += group.nbytes
        self.mark("copy_issued", name)
        bounce = group.views(self.bounce[slot_idx]) if self.bounce is not None else None
        if self.gpu.is_cuda:
            bounced = bounce is not None and not all(group.locked.values())
            if bounced and self._bounce_read[slot_idx] is not None:
                self._bounce_read[slot_idx].synchronize()  # the last copy out of this bounce buffer is done
            with torch.cuda.stream(self.copy_stream):
                if self._slot_free[slot_idx] is not None:
                    self.copy_stream.wait_event(self._slot_free[slot_idx])
                for local, view in group.views(dst).items():
                    view.copy_(self._source(group, local, slot_idx, bounce), non_blocking=True)
                ready = torch.cuda.Event()
                ready.record(self.copy_stream)
            if bounced:
                self._bounce_read[slot_idx] = ready
            self._pending[name] = (slot_idx, ready)
        else:
            def copy() -> None:
                self.mark("copy_start", name)
                with torch.inference_mode():  # as the forward that issued it (views made there are inference tensors)
                    for local, view in group.views(dst).items():
                        view.copy_(self._source(group, local, slot_idx, bounce))
                self.mark("copy_end", name)
            self._pending[name] = (slot_idx, self._worker.submit(copy))

    def acquire(self, name: str) -> None:
        """Wait until `name` is staged; its tensors are then in `self.current[name]`."""
        slot_idx, waitable = self._pending[name]
        if isinstance(waitable, Future):
            waitable.result()
        else:
            torch.cuda.current_stream(self.gpu.torch).wait_event(waitable)
        self.current[name] = self.groups[name].views(self.slots[slot_idx])
        self.mark("compute_start", name)

    def release(self, name: str) -> None:
        """Compute on `name` is issued/done: its slot may be refilled with the next block."""
        slot_idx, _ = self._pending.pop(name)
        self.current.pop(name, None)
        self.mark("compute_end", name)
        if self.gpu.is_cuda:
            done = torch.cuda.Event()
            done.record(torch.cuda.current_stream(self.gpu.torch))
            self._slot_free[slot_idx] = done
        if self._next < len(self._order):
            self._issue(slot_idx)


META = ".hq_meta"  # staged alongside a packed weight: its scales (int8) or scales+offsets (int4)


class SlotLinear:
    """A projection whose weight lives in a staging slot while its group is being computed.
    Packed int8/int4 weights (`packed` = (fmt, out, in)) are dequantized on the GPU per call."""

    def __init__(self, prefetcher: Prefetcher, group: str, local: str, packed: tuple | None = None):
        self.prefetcher, self.group, self.local, self.packed = prefetcher, group, local, packed

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        views = self.prefetcher.current[self.group]
        if self.packed is None:
            w = views[self.local]
            return torch.nn.functional.linear(x.to(w.dtype), w)
        # packed: dequantized one row tile at a time straight to x's dtype; each tile's
        # temporaries are charged to the op (model.scratch) while they exist
        from ..kernels.quant import PackedWeight, linear_dequant_tiled
        from ..model.scratch import temporary
        fmt, out, n = self.packed
        w = PackedWeight(fmt, views[self.local], views[self.local + META], out, n)
        return linear_dequant_tiled(x, w, lambda nbytes: temporary(nbytes, f"dequantize {fmt} {self.local} tile"))
