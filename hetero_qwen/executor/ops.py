"""Build stage 2: the ops of each weight group, one variant per device the plan runs it on.

  resident on that device : the model's op over the weights where they live (CPU: our kernels)
  off-GPU, run on the GPU : prefill above the crossover; the weights come through the prefetcher's
                            staging slots (registered with it here, slots allocated in stage 3)
Devices, formats and the crossover come from the plan's placement; nothing here re-decides them.
"""

from __future__ import annotations

import torch

from ..config import WeightGroup
from ..errors import PlanError
from ..model.layers import FFN, TorchLinear
from ..model.qwen3_5 import make_op, norm_key
from .cpu_ops import CpuKernelOp
from .runner import OpSlot
from .streaming import META, Prefetcher, SlotLinear
from .weights import PlacedGroup, WeightPlacer, storage_format


class OpBuilder:
    def __init__(self, placer: WeightPlacer, prefetcher: Prefetcher | None):
        self.placer, self.prefetcher = placer, prefetcher
        self.cfg, self.devices, self.dtype, self.kernels = placer.cfg, placer.devices, placer.dtype, placer.kernels

    def cpu_kernels_for(self, fmt: str) -> bool:
        """CPU variants run our kernels for packed formats, and for bf16 (fp32 stays plain torch)."""
        return self.kernels is not None and (fmt != "float" or self.dtype == torch.bfloat16)

    def slot(self, g: WeightGroup, p, placed: PlacedGroup) -> OpSlot:
        ops, norms, streamed, packed_in = {}, {}, set(), None
        fmt = storage_format(p)
        for d in sorted({p.decode_device, p.prefill_device}):
            vec = self.placer.vectors_on(g, d)
            norms[d] = vec[norm_key(self.cfg, g.kind)]
            if d == "gpu" and p.home != "gpu":  # an off-GPU block computed on the GPU: staged
                ops[d] = self._op(g, self._staged(g, placed.matrices), vec, False)
                streamed.add(d)
            elif d == "gpu":  # float tensors, or gpu_linear ops (int4/int8/fp8) that are the projection
                ops[d] = self._op(g, {k: TorchLinear(w) if isinstance(w, torch.Tensor) else w
                                      for k, w in placed.matrices.items()}, vec, False)
            elif p.home == "gpu":
                raise PlanError(f"{g.name}: lives on the GPU but is planned to run on the CPU")
            elif g.kind == "ffn" and self.cpu_kernels_for(fmt):
                m = placed.matrices
                fused = self.kernels.CpuFFN(m["gate_proj.weight"], m["up_proj.weight"], m["down_proj.weight"],
                                            _kernel_fmt(fmt))
                self._charge_packed(p, fmt, fused.nbytes, g.name)
                ops[d] = FFN(None, None, None, fused=CpuKernelOp(fused, self.dtype))
            else:
                projs = self._cpu_projections(g, p, fmt, placed.matrices)
                ops[d] = self._op(g, projs, vec, True)
                if placed.packed_block is not None and self.cpu_kernels_for(fmt):
                    packed_in = self.kernels.CpuLinear(placed.packed_block, _kernel_fmt(fmt))
        return OpSlot(g.name, ops, norms, p.decode_device, p.prefill_device,
                      p.crossover_tokens if p.prefill_device != p.decode_device else None,
                      frozenset(streamed), packed_in)

    def _op(self, g: WeightGroup, projs: dict, vec: dict, on_cpu: bool):
        # the fused CPU decode step (conv + norms + delta rule in one pass) when the kernels exist
        step = getattr(self.kernels, "deltanet_decode_step", None) if on_cpu and g.kind == "deltanet" else None
        return make_op(self.cfg, g.kind, projs, vec, step)

    def _staged(self, g: WeightGroup, mats: dict) -> dict:
        """Projections reading the prefetcher's staging slots; the group is registered with it."""
        tensors, projs = {}, {}
        for k, w in mats.items():
            if isinstance(w, torch.Tensor):
                tensors[k] = w
                projs[k] = SlotLinear(self.prefetcher, g.name, k)
            else:  # a packed int8/int4 weight: stream data + scales, dequantize on the GPU
                tensors[k], tensors[k + META] = w.data, w.meta
                projs[k] = SlotLinear(self.prefetcher, g.name, k, (w.fmt, w.out_features, w.in_features))
        self.prefetcher.add(g.name, tensors)
        return projs

    def _cpu_projections(self, g: WeightGroup, p, fmt: str, mats: dict) -> dict:
        if not self.cpu_kernels_for(fmt):
            if fmt != "float":
                raise PlanError(f"{g.name}: {fmt} CPU weights need the CPU kernels (hetero_qwen.kernels)")
            return {k: TorchLinear(w) for k, w in mats.items()}
        projs = {k: CpuKernelOp(self.kernels.CpuLinear(w, _kernel_fmt(fmt)), self.dtype) for k, w in mats.items()}
        self._charge_packed(p, fmt, sum(pr.nbytes for pr in projs.values()), g.name)
        return projs

    def _charge_packed(self, p, fmt: str, nbytes: int, owner: str) -> None:
        """Packed RAM weights are charged once their op exists (floats were charged when placed;
        disk-tier packed weights stay in the mapped file)."""
        if fmt != "float" and p.home == "cpu":
            self.devices.cpu.memory.alloc(nbytes, owner)


def _kernel_fmt(fmt: str) -> str:
    return fmt if fmt != "float" else "bf16"
