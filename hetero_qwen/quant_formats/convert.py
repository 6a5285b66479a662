"""`hetero-qwen quantize` from a community int4 checkpoint: the tensor list with packed parts
replaced by their float names, and the int4 repack that keeps the source's integers where exact."""

from __future__ import annotations

import torch

from ..kernels.quant import PackedWeight
from .repack import to_cpu_int4


def tensor_names(ckpt) -> list[tuple[str, str]]:
    """(canonical name, name to write) of every tensor, a packed weight once under `X.weight`."""
    if ckpt.quant is None:
        return [(n, ckpt.raw_names[n]) for n in ckpt.names()]
    parts = {p: w for w in ckpt.quant.names() for p in ckpt.quant.part_names(w)}
    out = [(n, ckpt.raw_names[n]) for n in ckpt.names() if n not in parts]
    for w in ckpt.quant.names():
        first = ckpt.quant.part_names(w)[0]
        raw_base = ckpt.raw_names[first].rsplit(".", 1)[0]
        out.append((w, raw_base + ".weight"))
    return sorted(out)


def packed_weight(ckpt, name: str, t: torch.Tensor, fmt: str) -> PackedWeight:
    """int4 from a GPTQ/AWQ/compressed-tensors weight whose groups fit ours (no act-order
    permutation, which our layout cannot store): the source integers with fp16 scale/offset;
    anything else: `t` (the exact dequantized weight) quantized as usual."""
    if fmt == "int4" and ckpt.quant is not None and name in ckpt.quant:
        rp = to_cpu_int4(ckpt.quant.int_groups(name))
        if rp.exact and rp.perm is None:
            return rp.weight
    return PackedWeight.from_float(t.float(), fmt)
