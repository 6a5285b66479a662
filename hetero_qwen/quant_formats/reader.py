"""A checkpoint's quantized linear weights under their float names: `X.weight` for the packed
tensors `X.qweight/qzeros/scales/g_idx` (GPTQ), `X.qweight/qzeros/scales` (AWQ) or
`X.weight_packed/...` (compressed-tensors). Checkpoint.get uses it to hand the loader the
dequantized weight, so every placement works on these checkpoints without a conversion step;
`int_groups(name)` gives the integers for the exact repacks (repack.py)."""

from __future__ import annotations

from typing import Callable

import torch

from . import awq, compressed, gptq
from .spec import FormatInfo, IntGroupWeight, QuantFormatError

# format -> (tensor that marks a packed module, its companion suffixes, reader)
LAYOUTS: dict[str, tuple[str, tuple[str, ...], Callable]] = {
    "gptq": ("qweight", gptq.SUFFIXES, gptq.read_gptq),
    "awq": ("qweight", awq.SUFFIXES, awq.read_awq),
    "compressed-tensors": ("weight_packed", compressed.SUFFIXES, compressed.read_compressed),
}


class QuantizedTensors:
    """`name -> packed parts` for every packed linear weight of a checkpoint."""

    def __init__(self, info: FormatInfo, names: list[str], raw: Callable[[str], torch.Tensor],
                 dtype: torch.dtype = torch.bfloat16):
        self.info, self.raw, self.dtype = info, raw, dtype
        marker, suffixes, self.reader = LAYOUTS[info.name]
        present = set(names)
        self.parts: dict[str, dict[str, str]] = {}
        for n in names:
            if n.endswith("." + marker):
                base = n[: -len(marker) - 1]
                self.parts[base + ".weight"] = {s: f"{base}.{s}" for s in suffixes if f"{base}.{s}" in present}
        self._shapes: dict[str, tuple[int, int]] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.parts

    def names(self) -> list[str]:
        return list(self.parts)

    def part_names(self, name: str) -> list[str]:
        return list(self.parts[name].values())

    def int_groups(self, name: str) -> IntGroupWeight:
        base = name[: -len(".weight")]
        tensors = {s: self.raw(full) for s, full in self.parts[name].items()}
        w = self.reader(tensors, base, self.info)
        self._shapes[name] = w.shape
        return w

    def shape(self, name: str) -> tuple[int, int]:
        if name not in self._shapes:
            p = self.parts[name]
            if "weight_shape" in p:
                self._shapes[name] = tuple(int(v) for v in self.raw(p["weight_shape"]).tolist())
            elif "qweight" in p:
                r, c = self.raw(p["qweight"]).shape
                self._shapes[name] = (c, r * 8) if self.info.name == "gptq" else (c * 8, r)
            else:
                raise QuantFormatError(f"{name}: no packed tensors")
        return self._shapes[name]

    def dequantize(self, name: str) -> torch.Tensor:
        """The exact dequantized weight [out, in] in `self.dtype` (fp32 keeps it exact)."""
        return self.int_groups(name).dequantize().to(self.dtype)
