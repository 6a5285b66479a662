"""The adapter between the model's projections and the CPU kernels."""

from __future__ import annotations

import torch


class CpuKernelOp:
    """Adapts a CPU kernel ([B, in] -> [B, out] fp32) to the model's [..., in] activations and dtype."""

    def __init__(self, kernel, dtype: torch.dtype):
        self.kernel, self.dtype = kernel, dtype
        self.nbytes = getattr(kernel, "nbytes", 0)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        y = self.kernel(x.reshape(-1, x.shape[-1]))
        return y.reshape(*lead, y.shape[-1]).to(self.dtype)
