"""Build stage 1: put each weight group's matrices in its home tier, in the plan's format.

  home gpu  : in the plan's GPU format: float in the compute dtype, copied to the GPU (no full host
              copy first); int4 / int8 / fp8 as kernels.gpu_linear ops (a GPTQ/AWQ/compressed-tensors
              int4 weight and the official FP8 weight keep their stored values where the layout allows:
              quant_formats.repack.to_gpu_int4, Fp8BlockLinear.from_fp8); matrices the plan keeps in
              float inside a quantized group (planner.group_formats.FLOAT_ON_GPU) stay float
  home cpu  : resident in host RAM (a huge-page arena) in the plan's format: floats in the compute
              dtype, int8/int4 packed for the CPU kernels; a mixer's input projections (the model's
              PACKED_MODULES) stored back to back so they can be read as one matrix
  home disk : left memory-mapped (the page cache is the tier), computed on the CPU
Groups the plan streams to the GPU for prefill live in their own arena, page-locked once at the end
of the build (exactly its used bytes) so copies from it are asynchronous; see Devices.lock_host.
The format comes from the plan (`GroupPlacement.dtype`); nothing here re-decides it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..config import WeightGroup
from ..formats import QUANT_FORMATS
from ..model.qwen3_5 import PACKED_MODULES
from ..checkpoint import META_SUFFIX, Checkpoint, load_packed, quantized_names, tensor_name
from ..planner.group_formats import GPU_QUANT, gpu_matrix_format
from .devices import Devices, MemoryTier
from .host_arena import HostArena

def storage_format(p) -> str:
    """What the plan stores a group's matrices as: "int8" | "int4" (packed), else "float" (the
    compute dtype; a memory-mapped group keeps the checkpoint's float dtype)."""
    return p.dtype if p.dtype in QUANT_FORMATS else "float"


@dataclass
class PlacedGroup:
    """A group's matrices at home: local name -> tensor | PackedWeight, and the back-to-back
    block of its packed input projections when they were stored so (else None)."""
    matrices: dict
    packed_block: object | None = None
    packed_names: tuple = field(default_factory=tuple)


class WeightPlacer:
    def __init__(self, ckpt: Checkpoint, devices: Devices, dtype: torch.dtype, kernels):
        self.ckpt, self.cfg, self.devices, self.dtype, self.kernels = ckpt, ckpt.cfg, devices, dtype, kernels
        self.disk = MemoryTier("disk", None)
        self.arena = HostArena()  # CPU-resident weights: huge pages for decode's streaming reads
        self.streamed_arena = HostArena()  # weights streamed to the GPU: page-locked once, in stage 3
        self.prequantized = {n for n, _ in quantized_names(self.cfg)} if self.cfg.hetero_format else set()

    def name(self, g: WeightGroup, local: str) -> str:
        return tensor_name(g.name, g.kind, local, self.cfg)

    def read(self, g: WeightGroup, local: str, shape) -> torch.Tensor:
        return self.ckpt.get(self.name(g, local), shape)

    def release(self, g: WeightGroup, local: str) -> None:
        """Unmap checkpoint pages already copied to their home (keeps load RSS near resident)."""
        full = self.name(g, local)
        self.ckpt.release(full)
        if full in self.prequantized:
            self.ckpt.release(full + META_SUFFIX)

    def place(self, g: WeightGroup, p) -> PlacedGroup:
        fmt = storage_format(p)
        out, to_ram = {}, {}
        for local, shape in g.matrices:
            if p.home == "gpu":
                out[local] = self._gpu_weight(g, local, shape, p)
                self.release(g, local)
                continue
            w = self._source(g, local, shape, p, fmt)
            if p.home == "disk" and (_fmt_of(w) == fmt or (fmt == "float" and w.dtype == self.dtype)):
                self.disk.alloc(_nbytes(w), g.name)  # a view of the mapped file: the page cache is this tier
                out[local] = w
            else:  # RAM in the plan's format (a disk group whose dtype needs converting, too)
                to_ram[local] = w.to(self.dtype) if fmt == "float" else self._pack(w, fmt)
        return self._settle(g, p, out, to_ram)

    def _gpu_weight(self, g: WeightGroup, local: str, shape, p):
        """One matrix on the GPU in its planned format: a float tensor or a gpu_linear op."""
        compute = "fp32" if self.dtype == torch.float32 else "bf16"
        mfmt = gpu_matrix_format(g.kind, local, p.dtype, compute)
        gpu = self.devices.gpu
        if mfmt not in GPU_QUANT:
            w = self._source(g, local, shape, p, "float")
            return gpu.place(w.to(self.dtype), g.name)
        from ..kernels.gpu_linear import Fp8BlockLinear, gpu_linear_from_float
        full, quant = self.name(g, local), self.ckpt.quant
        if mfmt == "int4" and quant is not None and full in quant:  # GPTQ / AWQ / compressed-tensors
            from ..quant_formats import to_gpu_int4
            op, _exact = to_gpu_int4(quant.int_groups(full), device=gpu.torch)
        elif mfmt == "fp8" and self.ckpt.is_fp8(full):  # the official FP8 checkpoint: as stored
            op = Fp8BlockLinear.from_fp8(self.ckpt.raw(full), self.ckpt.raw(full + "_scale_inv"), device=gpu.torch)
            self.ckpt.release(full + "_scale_inv")
        else:
            op = gpu_linear_from_float(self._source(g, local, shape, p, "float"), mfmt, device=gpu.torch)
        gpu.memory.alloc(op.nbytes, g.name)
        return op

    def _source(self, g, local, shape, p, fmt):
        """The checkpoint's weight: a PackedWeight as stored when the plan keeps that format
        off the GPU, else float (a pre-quantized weight bound elsewhere is dequantized once)."""
        full = self.name(g, local)
        quant = self.ckpt.quant
        if fmt == "int4" and p.home != "gpu" and quant is not None and full in quant:
            from ..quant_formats import to_cpu_int4
            rp = to_cpu_int4(quant.int_groups(full))  # the source's integers where our groups fit
            if rp.perm is None:  # act-order needs an input gather our layout cannot store
                return rp.weight
        if full not in self.prequantized:
            return self.read(g, local, shape)
        pw = load_packed(self.ckpt, full, shape)
        if p.home != "gpu" and fmt == pw.fmt:
            return pw
        return pw.dequantize()

    def _pack(self, w, fmt: str):
        if isinstance(w, torch.Tensor):
            return pack_rows(w, fmt, self.kernels.PackedWeight)
        return w

    def _settle(self, g: WeightGroup, p, out: dict, parts: dict) -> PlacedGroup:
        """Copy RAM-bound matrices into an arena; the input projections go to consecutive rows of
        one block so the CPU decode path reads them in one kernel call."""
        arena = self.streamed_arena if p.stream_prefill else self.arena
        packed = tuple(k for k in PACKED_MODULES.get(g.kind, ()) if k in parts)
        block = None
        if len(packed) > 1 and len({_fmt_of(parts[k]) for k in packed}) == 1:
            views, block = fuse_rows([parts[k] for k in packed], arena.empty,
                                     self.kernels.PackedWeight if self.kernels else None)
            out.update(zip(packed, views))
        else:
            packed = ()
        for k, v in parts.items():
            if k not in out:
                out[k] = arena.copy_packed(v) if hasattr(v, "fmt") else arena.copy(v)
        for k in parts:
            if isinstance(out[k], torch.Tensor):  # floats: charged here (packed: by the op that reads them)
                self.devices.cpu.memory.alloc(_nbytes(out[k]), g.name)
            self.release(g, k)
        return PlacedGroup(out, block, packed)

    def vectors_on(self, g: WeightGroup, device: str) -> dict[str, torch.Tensor]:
        """Small fp32 tensors (norms, A_log, dt_bias, conv) on `device`, charged there."""
        dev = self.devices[device]
        return {local: dev.place(self.read(g, local, shape).to(torch.float32).clone(), f"{g.name} vectors")
                for local, shape in g.vectors}


def _fmt_of(w) -> str:
    return w.fmt if hasattr(w, "fmt") else "float"


def _nbytes(w) -> int:
    return w.nbytes if hasattr(w, "fmt") else w.numel() * w.element_size()


def fuse_rows(ws: list, alloc, packed_cls=None) -> tuple[list, object]:
    """Copy same-format [rows_i, in] matrices (tensors or PackedWeights) into one block from
    `alloc(shape, dtype)`; returns (per-matrix row views of it in order, the whole block)."""
    def stack(ts: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        block = alloc((sum(t.shape[0] for t in ts), *ts[0].shape[1:]), ts[0].dtype)
        torch.cat(ts, out=block)
        rows, views = 0, []
        for t in ts:
            views.append(block[rows:rows + t.shape[0]])
            rows += t.shape[0]
        return block, views

    if not hasattr(ws[0], "fmt"):
        block, views = stack(ws)
        return views, block
    data, data_views = stack([w.data for w in ws])
    meta, meta_views = stack([w.meta for w in ws]) if ws[0].meta is not None else (None, [None] * len(ws))
    views = [packed_cls(w.fmt, d, m, w.out_features, w.in_features) for w, d, m in zip(ws, data_views, meta_views)]
    return views, packed_cls(ws[0].fmt, data, meta, data.shape[0], ws[0].in_features)


def pack_rows(t: torch.Tensor, fmt: str, packed_cls, rows: int = 4096):
    """Quantize `t` [out, in] a block of rows at a time: both formats scale per row (or per row
    group), so this equals quantizing it whole, with temporaries bounded to one block in fp32
    (the 27B embedding would otherwise need ~20 GB of them)."""
    parts = [packed_cls.from_float(t[r:r + rows].float(), fmt) for r in range(0, t.shape[0], rows)]
    if len(parts) == 1:
        return parts[0]
    return packed_cls(fmt, torch.cat([q.data for q in parts]), torch.cat([q.meta for q in parts]),
                      t.shape[0], t.shape[1])


class PackedEmbedding:
    """`embed[ids]` for a packed int8/int4 table: only the looked-up rows are dequantized."""

    device = torch.device("cpu")

    def __init__(self, packed):
        self.packed = packed

    def __getitem__(self, ids: torch.Tensor) -> torch.Tensor:
        from ..kernels.quant import PackedWeight
        pw, flat = self.packed, ids.reshape(-1)
        rows = PackedWeight(pw.fmt, pw.data[flat], pw.meta[flat], flat.numel(), pw.in_features).dequantize()
        return rows.view(*ids.shape, pw.in_features)
