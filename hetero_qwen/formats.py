"""Weight storage formats and their sizes in bytes.

A 2-D weight `[out, in]` is stored as one of:
  bf16 / fp16 / fp32 : as is.
  int8  : int8 values `[out, in]` + one fp32 scale per output row (symmetric).
  int4  : two 4-bit values per byte `[out, in/2]` + one fp32 scale and one fp32 offset per
          group of INT4_GROUP inputs `[out, in/INT4_GROUP]` (asymmetric, group-wise).
  fp8   : e4m3 values + one fp32 scale per 128x128 block (the official FP8 checkpoints).
Vectors (norms, biases, A_log, conv weights) always stay in their source float dtype.
The planner uses these sizes; the loader and kernels produce tensors of exactly these sizes.
"""

from __future__ import annotations

import math

FLOAT_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
QUANT_FORMATS = ("int8", "int4")
ALL_FORMATS = ("bf16", "fp16", "fp32", "int8", "int4", "fp8")

# Inputs per int4 quantization group (one scale + one offset each). Chosen by measurement in
# bench/kernels.py: 64 keeps the int4 error small at 1/8 extra bytes of fp32 metadata per value.
INT4_GROUP = 64
FP8_BLOCK = 128


def matrix_bytes(rows: int, cols: int, fmt: str) -> int:
    """Bytes one `[rows, cols]` weight occupies in format `fmt`, metadata included."""
    if fmt in FLOAT_BYTES:
        return rows * cols * FLOAT_BYTES[fmt]
    if fmt == "int8":
        return rows * cols + rows * 4
    if fmt == "int4":
        groups = math.ceil(cols / INT4_GROUP)
        return rows * math.ceil(cols / 2) + rows * groups * 8
    if fmt == "fp8":
        return rows * cols + math.ceil(rows / FP8_BLOCK) * math.ceil(cols / FP8_BLOCK) * 4
    raise ValueError(f"unknown weight format {fmt!r}; expected one of {', '.join(ALL_FORMATS)}")


def check_format(fmt: str) -> str:
    if fmt not in ALL_FORMATS:
        raise ValueError(f"unknown weight format {fmt!r}; expected one of {', '.join(ALL_FORMATS)}")
    return fmt
