"""The two compute devices and their memory tiers, with byte accounting.

A `Device` is where ops run ("gpu" or "cpu") and whose memory holds their weights and caches.
The GPU is a real CUDA device, or, on machines without CUDA, a simulated one: its tensors are
host tensors, but every byte placed on it is charged to its own budget, its peak is tracked,
and every hop to or from it is counted. So every plan runs, and is checked, in CI.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from ..errors import HeteroQwenError


class BudgetExceeded(HeteroQwenError):
    """An op or allocation would exceed a tier's budget (never a silent spill)."""


@dataclass
class MemoryTier:
    name: str
    budget: int | None          # bytes; None = unaccounted (host RAM without a budget)
    used: int = 0
    peak: int = 0
    by_owner: dict = field(default_factory=dict)

    def alloc(self, nbytes: int, owner: str) -> None:
        if self.budget is not None and self.used + nbytes > self.budget:
            raise BudgetExceeded(f"{owner} needs {nbytes / 2**20:.1f} MiB on {self.name} but only "
                                 f"{(self.budget - self.used) / 2**20:.1f} MiB of its "
                                 f"{self.budget / 2**20:.1f} MiB budget is free")
        self.used += nbytes
        self.peak = max(self.peak, self.used)
        self.by_owner[owner] = self.by_owner.get(owner, 0) + nbytes

    @contextmanager
    def transient(self, nbytes: int, owner: str):
        """Hold `nbytes` for the duration of a `with` block (an op's temporaries)."""
        self.alloc(nbytes, owner)
        try:
            yield
        finally:
            self.free(nbytes, owner)

    def free(self, nbytes: int, owner: str) -> None:
        self.used -= nbytes
        left = self.by_owner.get(owner, 0) - nbytes
        if left > 0:
            self.by_owner[owner] = left
        else:
            self.by_owner.pop(owner, None)


@dataclass
class Traffic:
    """Bytes moved between devices, by direction, and the number of hidden-state hops."""
    h2d: int = 0
    d2h: int = 0
    hops: int = 0
    streamed: int = 0  # weight bytes copied to the GPU for streamed ops (part of h2d)
    logits: int = 0    # logits bytes copied from the GPU to the host (not part of d2h: no hop)

    def as_dict(self) -> dict:
        return {"h2d_bytes": self.h2d, "d2h_bytes": self.d2h, "hops": self.hops, "streamed_bytes": self.streamed,
                "logits_d2h_bytes": self.logits}

    def snapshot(self) -> "Traffic":
        return Traffic(self.h2d, self.d2h, self.hops, self.streamed, self.logits)

    def since(self, before: "Traffic") -> "Traffic":
        return Traffic(self.h2d - before.h2d, self.d2h - before.d2h, self.hops - before.hops,
                       self.streamed - before.streamed, self.logits - before.logits)


class Device:
    def __init__(self, name: str, torch_device: torch.device | str, budget: int | None, simulated: bool = False):
        self.name = name
        self.torch = torch.device(torch_device)
        self.simulated = simulated
        self.memory = MemoryTier(name, budget)
        self._busy = 0.0
        self._events: list = []  # (start, end) CUDA events of ops whose time is not summed yet

    @property
    def busy_seconds(self) -> float:
        """Seconds this device spent running ops: host time on the CPU and the simulated GPU, the
        span between CUDA events around each op on a real GPU (its launches return early)."""
        if self._events:
            self._events[-1][1].synchronize()
            self._busy += sum(s.elapsed_time(e) for s, e in self._events) / 1000
            self._events = []
        return self._busy

    @busy_seconds.setter
    def busy_seconds(self, value: float) -> None:
        self.busy_seconds  # sums pending events first  # noqa: B018
        self._busy = value

    @contextmanager
    def busy(self):
        """Count the time of the ops issued inside the block as this device's busy time."""
        if self.is_cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self._events.append((start, end))
            return
        t0 = time.perf_counter()
        yield
        self._busy += time.perf_counter() - t0

    @property
    def is_cuda(self) -> bool:
        return self.torch.type == "cuda"

    def __repr__(self) -> str:
        kind = "simulated " if self.simulated else ""
        return f"Device({kind}{self.name} on {self.torch})"

    def place(self, t: torch.Tensor, owner: str) -> torch.Tensor:
        """Charge `t` to this device and return it there."""
        self.memory.alloc(t.numel() * t.element_size(), owner)
        if self.is_cuda:
            return t.to(self.torch)
        return t.cpu() if t.device.type != "cpu" else t


class Devices:
    """The gpu and cpu devices of one engine and the traffic between them."""

    def __init__(self, gpu: Device | None, cpu: Device):
        self.gpu, self.cpu = gpu, cpu
        self.traffic = Traffic()
        self.locked: list[tuple[int, int]] = []  # [start, end) host ranges page-locked for the GPU
        self.locked_bytes = 0

    def lock_host(self, t: torch.Tensor) -> None:
        """Page-lock host memory `t`, exactly its size, so copies from it to a real GPU run
        asynchronously (torch's pinned allocator would round each block up to a power of two).
        On a simulated GPU the range is only recorded, so the accounting can be checked."""
        if self.gpu is None:
            return
        start, n = t.data_ptr(), t.numel() * t.element_size()
        if self.gpu.is_cuda:
            torch.cuda.check_error(int(torch.cuda.cudart().cudaHostRegister(start, n, 0)))
        self.locked.append((start, start + n))
        self.locked_bytes += n

    def is_locked(self, t: torch.Tensor) -> bool:
        """Whether a copy from host tensor `t` can be asynchronous (page-locked memory)."""
        lo = t.data_ptr()
        hi = lo + t.numel() * t.element_size()
        if any(a <= lo and hi <= b for a, b in self.locked):
            return True
        return self.gpu is not None and self.gpu.is_cuda and t.is_pinned()

    def __getitem__(self, name: str) -> Device:
        dev = self.gpu if name == "gpu" else self.cpu if name == "cpu" else None
        if dev is None:
            raise KeyError(f"no {name} device in this engine")
        return dev

    def hop(self, x: torch.Tensor, src: Device, dst: Device) -> torch.Tensor:
        """Move the hidden state between devices, counting the bytes."""
        if src is dst:
            return x
        n = x.numel() * x.element_size()
        if dst.name == "gpu":
            self.traffic.h2d += n
        else:
            self.traffic.d2h += n
        self.traffic.hops += 1
        return x.to(dst.torch, non_blocking=False)

    def logits_to_host(self, logits: torch.Tensor, src: Device) -> torch.Tensor:
        """Logits to the host as fp32, counting the bytes: moved in the compute dtype first, so no
        fp32 [T, vocab] copy is ever made on the GPU."""
        if src.name == "gpu":
            self.traffic.logits += logits.numel() * logits.element_size()
        return logits.to("cpu").float()

    def tiers(self) -> dict:
        out = {"cpu": self.cpu.memory}
        if self.gpu is not None:
            out["gpu"] = self.gpu.memory
        return out


def make_devices(gpu_budget: int | None, cpu_budget: int | None, simulate_gpu: bool | None = None) -> Devices:
    """A real CUDA GPU when present (unless simulate_gpu), a simulated one otherwise; no GPU
    device at all when the budget is 0/None."""
    cpu = Device("cpu", "cpu", cpu_budget)
    if not gpu_budget:
        return Devices(None, cpu)
    use_cuda = torch.cuda.is_available() and not simulate_gpu
    gpu = Device("gpu", "cuda:0" if use_cuda else "cpu", gpu_budget, simulated=not use_cuda)
    return Devices(gpu, cpu)


def working_set_hook(devices: Devices):
    """An op hook charging each GPU op's activations to the GPU budget: while the op runs, its
    input plus every temporary it declares (model.scratch.temporary: attention scores, dequantized
    weight tiles); once it ran, its input and output. An op that does not fit raises
    BudgetExceeded naming it (and the temporary)."""
    from ..model.scratch import metered

    def hook(op_name: str, dev: Device, x: torch.Tensor, out: torch.Tensor) -> None:
        if dev.name != "gpu":
            return
        n = x.numel() * x.element_size() + out.numel() * out.element_size()
        dev.memory.alloc(n, f"op {op_name}")
        dev.memory.free(n, f"op {op_name}")

    @contextmanager
    def scope(op_name: str, dev: Device, x: torch.Tensor):
        if dev.name != "gpu":
            yield
            return
        with dev.memory.transient(x.numel() * x.element_size(), f"op {op_name}"), \
                metered(lambda n, what: dev.memory.transient(n, f"op {op_name} ({what})"), dev.name):
            yield
    hook.gpu_only = True  # a no-op for CPU ops: the one-token CPU fast path may skip it
    hook.scope = scope
    return hook
