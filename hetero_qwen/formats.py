"""Weight storage formats and their sizes in bytes.

A 2-D weight `[out, in]` is stored as one of:
  bf16 / fp16 / fp32 : as is.
  int8  : int8 values `[out, in]` + one fp32 scale per output row (symmetric).
  int4  : asymmetric, group-wise: `w ~ q * scale + offset`, q in 0..15, one (scale, offset) pair
          per group of INT4_GROUP consecutive inputs of a row.
          packed  uint8 `[out, groups * INT4_GROUP/2]` (rows padded to whole groups; pad q = 0).
                  Within a group, byte j holds input j in its low nibble and input
                  j + INT4_GROUP/2 in its high nibble ("split halves"): one AND gives the first
                  half of the group, one shift + AND the second half, each already in input order,
                  so SIMD kernels need no shuffles at any vector width dividing INT4_GROUP/2.
          meta    fp16 `[out, groups, 2]` = (scale, offset) per group, 4 bytes per group.
          At INT4_GROUP=64 that is 4.5 bits per weight. fp16 metadata costs nothing measurable in
          error (its rounding is ~2^-11 of a value vs the 4-bit step of 1/15 of the group range;
          quantization uses the already-rounded scale/offset), and halves the metadata bytes vs
          fp32, which is speed at decode. Group size: see INT4_GROUP below.
  fp8   : e4m3 values + one fp32 scale per 128x128 block (the official FP8 checkpoints).
Vectors (norms, biases, A_log, conv weights) always stay in their source float dtype.
The planner uses these sizes; the loader and kernels produce tensors of exactly these sizes.
"""

from __future__ import annotations

import math

from . import measured_defaults

FLOAT_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
QUANT_FORMATS = ("int8", "int4")
ALL_FORMATS = ("bf16", "fp16", "fp32", "int8", "int4", "fp8")

# Inputs per int4 quantization group (one fp16 scale + one fp16 offset each), chosen by measuring
# the weight error of each group size (measured_defaults.INT4_GROUP has the numbers):
#   G=128 fp16 4.25 bits: 0.100 Gaussian / 0.170 Student-t3 rows
#   G=64  fp16 4.50 bits: 0.090 / 0.131   <- chosen
#   G=128 fp32 4.50 bits: 0.100 / 0.170   (same bytes as G=64 fp16, worse error)
#   G=32  fp16 5.00 bits: 0.078 / 0.100   (11% more bytes = 11% slower decode)
# fp16 vs fp32 metadata changes the error by < 0.1%. 64 is also the activation-quantization
# block of the int4 integer-dot kernels.
INT4_GROUP = measured_defaults.INT4_GROUP.value
INT4_META_BYTES = 4  # fp16 scale + fp16 offset per group
FP8_BLOCK = 128


GPU_FORMATS = ("bf16", "fp32", "int8", "int4", "fp8")  # what the GPU runs (kernels/gpu_linear.py)


def gpu_matrix_bytes(rows: int, cols: int, fmt: str) -> int:
    """Bytes one `[rows, cols]` weight occupies on the GPU: as `matrix_bytes`, except that int4
    (tinygemm, kernels/gpu_linear.Int4Linear) pads rows to 16 and inputs to whole 128-input tiles
    (no padding on the 27B's shapes; the tiny test models pad)."""
    if fmt == "int4":
        rows_p, cols_p = -(-rows // 16) * 16, -(-cols // max(INT4_GROUP, 128)) * max(INT4_GROUP, 128)
        groups = cols_p // INT4_GROUP
        return rows_p * cols_p // 2 + rows_p * groups * INT4_META_BYTES
    return matrix_bytes(rows, cols, fmt)


def matrix_bytes(rows: int, cols: int, fmt: str) -> int:
    """Bytes one `[rows, cols]` weight occupies in format `fmt`, metadata included."""
    if fmt in FLOAT_BYTES:
        return rows * cols * FLOAT_BYTES[fmt]
    if fmt == "int8":
        return rows * cols + rows * 4
    if fmt == "int4":
        groups = math.ceil(cols / INT4_GROUP)
        return rows * groups * (INT4_GROUP // 2) + rows * groups * INT4_META_BYTES
    if fmt == "fp8":
        return rows * cols + math.ceil(rows / FP8_BLOCK) * math.ceil(cols / FP8_BLOCK) * 4
    raise ValueError(f"unknown weight format {fmt!r}; expected one of {', '.join(ALL_FORMATS)}")

