"""Quantize / dequantize the CPU weight formats, and the fp32 reference GEMV for each.

Layouts are defined in `hetero_qwen.formats` (module docstring); `PackedWeight.nbytes` equals
`formats.matrix_bytes` for every format. Error bounds (tested in tests/test_kernels_quant.py):

  int8 (symmetric, per row):   |w - deq| <= scale_row / 2 = max|w_row| / 254
  int4 (asymmetric, per group): |w - deq| <= scale_g / 2 + 2^-10 (|min_g| + |max_g|)
        (half a step, plus the fp16 rounding of the stored offset and of 15 * scale)

The int4 kernels also quantize activations per 64-input group to int8 (one fp32 scale per
group and token, `quantize_activations_int4`), so an int4 GEMV differs from the fp32
reference by at most sum_g xs_g/2 * sum_{j in g} |w_deq_j| (plus fp32 rounding);
`int4_linear_exact` reproduces the kernels' arithmetic for tight equality tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..formats import INT4_GROUP, matrix_bytes

G = INT4_GROUP


# ------------------------------------------------------------------------------------ int8
def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w [out, in] float -> (q int8 [out, in], scale fp32 [out]); w ~ q * scale[:, None]."""
    w = w.float()
    scale = w.abs().amax(dim=1) / 127.0
    inv = torch.where(scale > 0, 1.0 / torch.where(scale > 0, scale, 1.0), 0.0)
    q = torch.round(w * inv[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.contiguous(), scale.contiguous()


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale.float()[:, None]


# ------------------------------------------------------------------------------------ int4
def int4_groups(in_features: int) -> int:
    return -(-in_features // G)


def quantize_int4(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w [out, in] float -> (packed uint8 [out, groups*G/2], meta fp16 [out, groups, 2]).

    Per group: scale = (max - min) / 15 and offset = min, both rounded to fp16 first; then
    q = clamp(round((w - offset) / scale), 0, 15). Byte j of a group holds q[j] (low nibble) and
    q[j + G/2] (high nibble). Rows are padded to whole groups with q = 0.
    """
    w = w.float()
    out, n = w.shape
    ng = int4_groups(n)
    pad = ng * G - n
    lo_src = torch.nn.functional.pad(w, (0, pad), value=float("inf")).view(out, ng, G)
    hi_src = torch.nn.functional.pad(w, (0, pad), value=float("-inf")).view(out, ng, G)
    mn, mx = lo_src.amin(dim=2), hi_src.amax(dim=2)
    scale16 = ((mx - mn) / 15.0).to(torch.float16)
    offset16 = mn.to(torch.float16)
    s, m = scale16.float(), offset16.float()
    wp = torch.nn.functional.pad(w, (0, pad)).view(out, ng, G)
    inv = torch.where(s > 0, 1.0 / torch.where(s > 0, s, 1.0), 0.0)
    q = torch.round((wp - m[..., None]) * inv[..., None]).clamp_(0, 15).to(torch.uint8)
    if pad:
        q.view(out, ng * G)[:, n:] = 0
    packed = q[..., : G // 2] | (q[..., G // 2:] << 4)
    meta = torch.stack([scale16, offset16], dim=-1)
    return packed.reshape(out, ng * G // 2).contiguous(), meta.contiguous()


def unpack_int4(packed: torch.Tensor, in_features: int) -> torch.Tensor:
    """packed [out, groups*G/2] -> q uint8 [out, in] (0..15)."""
    out = packed.shape[0]
    ng = int4_groups(in_features)
    p = packed.view(out, ng, G // 2)
    q = torch.cat([p & 15, p >> 4], dim=-1).reshape(out, ng * G)
    return q[:, :in_features]


def dequantize_int4(packed: torch.Tensor, meta: torch.Tensor, in_features: int) -> torch.Tensor:
    out = packed.shape[0]
    ng = int4_groups(in_features)
    q = unpack_int4(packed, in_features).float()
    q = torch.nn.functional.pad(q, (0, ng * G - in_features)).view(out, ng, G)
    m = meta.float()
    w = q * m[..., 0:1] + m[..., 1:2]
    return w.reshape(out, ng * G)[:, :in_features].contiguous()


def int4_error_bound(w: torch.Tensor) -> torch.Tensor:
    """Per-element bound on |w - dequantize(quantize(w))| (see module docstring)."""
    w = w.float()
    out, n = w.shape
    ng = int4_groups(n)
    pad = ng * G - n
    mn = torch.nn.functional.pad(w, (0, pad), value=float("inf")).view(out, ng, G).amin(2)
    mx = torch.nn.functional.pad(w, (0, pad), value=float("-inf")).view(out, ng, G).amax(2)
    b = (mx - mn) / 15.0 / 2 + 2.0 ** -10 * (mn.abs() + mx.abs()) + 1e-12
    return b.repeat_interleave(G, dim=1)[:, :n]


def quantize_activations_int4(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [B, in] fp32 -> (xq int8 [B, groups*G], xs fp32 [B, groups], xsum fp32 [B, groups]).

    Exactly what the C++ / Numba int4 kernels do: per group of G inputs, xs = max|x| / 127,
    xq = round_half_even(x / xs) (0 when xs == 0); xsum = xs * sum(xq), the group sum of the
    dequantized activations, so the kernels compute exactly dot(w_deq, x_deq) per full group.
    Padding of the last group is 0.
    """
    x = x.float()
    B, n = x.shape
    ng = int4_groups(n)
    xp = torch.nn.functional.pad(x, (0, ng * G - n)).view(B, ng, G)
    xs = xp.abs().amax(dim=2) / 127.0
    safe = torch.where(xs > 0, xs, 1.0)
    xq = torch.where(xs[..., None] > 0, torch.round(xp / safe[..., None]), 0.0).to(torch.int8)
    xsum = xq.to(torch.int32).sum(dim=2).float() * xs
    return xq.reshape(B, ng * G).contiguous(), xs.contiguous(), xsum.contiguous()


# ------------------------------------------------------------------------ packed weights
@dataclass
class PackedWeight:
    """One `[out, in]` weight in a CPU format: bf16 | int8 | int4 (layouts: hetero_qwen.formats).

    data: bf16 [out, in] | int8 [out, in] | uint8 [out, groups*G/2]
    meta: None           | fp32 [out]     | fp16 [out, groups, 2]
    """

    fmt: str
    data: torch.Tensor
    meta: torch.Tensor | None
    out_features: int
    in_features: int

    @classmethod
    def from_float(cls, w: torch.Tensor, fmt: str) -> "PackedWeight":
        if w.dim() != 2:
            raise ValueError(f"expected a 2-D weight, got shape {tuple(w.shape)}")
        out, n = w.shape
        if fmt == "bf16":
            return cls("bf16", w.detach().to(torch.bfloat16).contiguous(), None, out, n)
        if fmt == "int8":
            q, s = quantize_int8(w.detach())
            return cls("int8", q, s, out, n)
        if fmt == "int4":
            p, m = quantize_int4(w.detach())
            return cls("int4", p, m, out, n)
        raise ValueError(f"unsupported CPU weight format {fmt!r}; expected bf16, int8 or int4")

    @property
    def nbytes(self) -> int:
        n = self.data.numel() * self.data.element_size()
        return n + (self.meta.numel() * self.meta.element_size() if self.meta is not None else 0)

    def expected_nbytes(self) -> int:
        return matrix_bytes(self.out_features, self.in_features, self.fmt)

    def dequantize(self) -> torch.Tensor:
        """fp32 [out, in]."""
        if self.fmt == "bf16":
            return self.data.float()
        if self.fmt == "int8":
            return dequantize_int8(self.data, self.meta)
        return dequantize_int4(self.data, self.meta, self.in_features)


# ------------------------------------------------------------ tiled GPU dequantization
DEQUANT_TILE_FP32 = 16 * 2**20  # bytes of one fp32 row tile: what a streamed int8/int4 matmul dequantizes at once
DEQUANT_FP32_COPIES = {"int8": 2, "int4": 3}  # fp32 temporaries of one tile (int4: unpacked q, padded q, w)


def dequant_tile_rows(in_features: int) -> int:
    """Rows per tile: one fp32 tile of at most DEQUANT_TILE_FP32 bytes (at least one row)."""
    return max(1, DEQUANT_TILE_FP32 // (in_features * 4))


def dequant_tile_bytes(fmt: str, rows: int, in_features: int, itemsize: int) -> int:
    """Temporaries of dequantizing `rows` rows: fp32 copies plus the compute-dtype tile
    (int4 also unpacks its nibbles to a uint8 [rows, in])."""
    n = rows * in_features
    return n * (4 * DEQUANT_FP32_COPIES[fmt] + itemsize + (1 if fmt == "int4" else 0))


def dequantize_rows(w: "PackedWeight", r0: int, r1: int, dtype: torch.dtype) -> torch.Tensor:
    """Rows [r0, r1) of a packed weight in `dtype` (computed in fp32, as `dequantize`)."""
    if w.fmt == "bf16":
        return w.data[r0:r1].to(dtype)
    if w.fmt == "int8":
        return dequantize_int8(w.data[r0:r1], w.meta[r0:r1]).to(dtype)
    return dequantize_int4(w.data[r0:r1], w.meta[r0:r1], w.in_features).to(dtype)


def linear_dequant_tiled(x: torch.Tensor, w: "PackedWeight", on_tile=None) -> torch.Tensor:
    """y = x @ deq(w)^T in x's dtype, dequantizing one row tile at a time (never the whole
    matrix in fp32). `on_tile(nbytes)` returns a context manager that holds each tile's
    temporaries (the executor charges them). x [..., in] -> [..., out]."""
    from contextlib import nullcontext
    y = x.new_empty(*x.shape[:-1], w.out_features)
    rows = dequant_tile_rows(w.in_features)
    for r0 in range(0, w.out_features, rows):
        r1 = min(w.out_features, r0 + rows)
        hold = on_tile(dequant_tile_bytes(w.fmt, r1 - r0, w.in_features, x.element_size())) if on_tile else nullcontext()
        with hold:
            y[..., r0:r1] = torch.nn.functional.linear(x, dequantize_rows(w, r0, r1, x.dtype))
    return y


# --------------------------------------------------------------------- reference GEMVs
def linear_dequant(x: torch.Tensor, w: PackedWeight) -> torch.Tensor:
    """Reference GEMV/GEMM for every format: dequantize, then fp32 matmul. x [B, in] -> [B, out]."""
    return x.float() @ w.dequantize().t()


def int4_linear_exact(x: torch.Tensor, w: PackedWeight) -> torch.Tensor:
    """The int4 kernels' arithmetic in fp64: int8 activations per full group, fp32 in the tail."""
    assert w.fmt == "int4"
    x = x.float()
    n, full = w.in_features, w.in_features // G
    xq, xs, xsum = quantize_activations_int4(x)
    q = unpack_int4(w.data, n).double()
    m = w.meta.double()
    B = x.shape[0]
    y = torch.zeros(B, w.out_features, dtype=torch.float64)
    if full:
        qf = q[:, : full * G].view(-1, full, G)
        xqf = xq[:, : full * G].double().view(B, full, G)
        dots = torch.einsum("ogj,bgj->bog", qf, xqf)
        y += (dots * m[None, :, :full, 0] * xs[:, None, :full].double()).sum(-1)
        y += (m[None, :, :full, 1] * xsum[:, None, :full].double()).sum(-1)
    if n > full * G:
        wt = q[:, full * G:] * m[:, full, 0:1] + m[:, full, 1:2]
        y += x[:, full * G:].double() @ wt.t()
    return y.float()


def int8_linear_exact(x: torch.Tensor, w: PackedWeight) -> torch.Tensor:
    """The VNNI int8 kernel's arithmetic (AVX-512 ISAs) in fp64: activations quantized per full
    group of G inputs as for int4, the partial last group in fp32, one weight scale per row."""
    assert w.fmt == "int8"
    x = x.float()
    n, full = w.in_features, w.in_features // G
    xq, xs, _ = quantize_activations_int4(x)
    q = w.data.double()
    B = x.shape[0]
    y = torch.zeros(B, w.out_features, dtype=torch.float64)
    if full:
        dots = torch.einsum("ogj,bgj->bog", q[:, : full * G].view(-1, full, G),
                            xq[:, : full * G].double().view(B, full, G))
        y += (dots * xs[:, None, :full].double()).sum(-1)
    if n > full * G:
        y += x[:, full * G:].double() @ q[:, full * G:].t()
    return (y * w.meta.double()[None, :]).float()


def act_error_bound(x: torch.Tensor, w: PackedWeight) -> torch.Tensor:
    """Bound on |kernel with int8 activations - linear_dequant| from activation quantization
    (int4, and int8 on the VNNI ISAs): half an activation step per input of a full group: [B, out]."""
    n, full = w.in_features, w.in_features // G
    _, xs, _ = quantize_activations_int4(x)
    wabs = w.dequantize().abs()[:, : full * G].view(w.out_features, full, G).sum(-1)  # [out, full]
    return (xs[:, :full] / 2) @ wabs.t()

