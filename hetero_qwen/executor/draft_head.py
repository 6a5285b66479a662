"""The head's first n rows as an op of their own, for drafts over a trimmed vocabulary.

With profile `mtp.draft_vocab: N`, an MTP draft picks among token ids < N only: the head reads N of
its V rows per draft (FR-Spec, Zhao et al. 2025; llama.cpp PR 20700 and exllamav3 PR 303 trim the
Qwen3.5/3.6 draft head to 32K-64K rows). Byte-level BPE ids follow merge order, which follows
frequency, so the first N ids are the frequent tokens. The verify forward still scores the whole
vocabulary, so output is unchanged: greedy output is exact, and with temperature the acceptance
rule uses the draft distribution q, which is zero past N.

Every layout here stores rows in order, so the first n rows are a view: no bytes are copied.
"""

from __future__ import annotations

from ..kernels.gpu_linear import Int8Linear
from ..kernels.ops import CpuLinear
from ..kernels.quant import PackedWeight
from ..model.layers import TorchLinear
from .cpu_ops import CpuKernelOp


def first_rows_kernel(k: CpuLinear, n: int) -> CpuLinear:
    """A CPU kernel over the first n rows of `k`'s weight (a view)."""
    w = k.weight
    view = PackedWeight(w.fmt, w.data[:n], None if w.meta is None else w.meta[:n], n, w.in_features)
    return CpuLinear(view, w.fmt)


def first_rows(op, n: int):
    """An op computing the first n outputs of the linear `op`, or None for a layout without
    whole rows in order (int4 tinygemm tiles, fp8 128-row blocks): the caller runs the whole head."""
    if isinstance(op, CpuKernelOp) and isinstance(op.kernel, CpuLinear):
        return CpuKernelOp(first_rows_kernel(op.kernel, n), op.dtype)
    if isinstance(op, TorchLinear):
        return TorchLinear(op.weight[:n])
    if isinstance(op, Int8Linear):
        return Int8Linear(op.q[:n], op.scale[:n], op.device)
    return None
