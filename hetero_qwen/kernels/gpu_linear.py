"""GPU weight formats as standalone linear ops: int4 (torch's tinygemm), int8 per output channel,
fp8 e4m3 with 128x128 block scales. Each holds one `[out, in]` weight on a device and maps
x[..., in] -> y[..., out] in x's dtype; each has `reference(x)` (dequantize to fp32, F.linear).

    Int4Linear   w = (q - 8) * scale + zero per group of `group` inputs (tinygemm's 'min' form:
                 zero = min + 8 * scale), scale and zero in bf16 [groups, out, 2]; 4 bits + 32/group
                 bits per weight. Decode (rows <= crossover) runs aten._weight_int4pack_mm (CUDA,
                 Ampere and newer) or aten._weight_int4pack_mm_for_cpu (the CPU, and the simulated
                 GPU); above the crossover, with `prefill_plain=True`, row tiles are dequantized to
                 the compute dtype and go through the plain matmul (the plain nibbles cost 0.5 byte
                 per weight more, so it is opt-in). No kernel (older GPUs): plain nibbles,
                 dequantize + matmul, said once.
    Int8Linear   w = q * scale[out], q int8; torch._weight_int8pack_mm where it runs, else
                 x @ q.to(dtype).T * scale in row tiles.
    Fp8BlockLinear  w = e4m3 * scale_inv[block_row, block_col] (128x128, fp32): torch._scaled_mm
                 with 1x128 activation / 128x128 weight scales on CUDA SM90+, checked against the
                 dequantized path on first use; elsewhere dequantized row tiles + matmul.

Builder use: `Int4Linear.from_float(w, group, device=...)` for a float weight, or
`Int4Linear.from_int4_groups(q, scale, zero, group, perm=...)` for GPTQ/AWQ/compressed-tensors
(hetero_qwen.quant_formats.repack.to_gpu_int4 does it); `Int8Linear.from_float(w, device=...)`;
`Fp8BlockLinear.from_fp8(w_e4m3, scale_inv, device=...)` for the official FP8 checkpoint.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

INT4_GPU_GROUPS = (32, 64, 128, 256)
# Default int4 group for float weights. Measured (hetero_qwen.quality.weight_error_table, relative
# RMS error on Gaussian / Student-t3 rows of 5120): G=32 5.0 bits 0.078/0.100, G=64 4.5 bits
# 0.090/0.131, G=128 4.25 bits 0.100/0.170, G=256 4.125 bits 0.109/0.214. 64 is the lowest error
# within the 4.5 bits/weight that fit the 27B on 24 GB (issue 12); it is the CPU int4 group too,
# with the same bytes (bf16 vs fp16 scale + zero), so a group moves between tiers without regrouping.
GPU_INT4_GROUP = 64
FP8_BLOCK = 128
E4M3_MAX = 448.0
ROW_TILE = 4096  # output rows dequantized at a time on the plain paths (bounds the temporary)
_said: set[str] = set()


def say_once(key: str, msg: str) -> None:
    if key not in _said:
        _said.add(key)
        print(msg, file=sys.stderr, flush=True)


def _rows(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    return x.reshape(-1, x.shape[-1]), tuple(x.shape[:-1])


def _tiled_matmul(x: torch.Tensor, out_features: int, tile_weight) -> torch.Tensor:
    """x [M, K] @ W.T where W's rows r0:r1 come from tile_weight(r0, r1) in x's dtype."""
    y = torch.empty(x.shape[0], out_features, dtype=x.dtype, device=x.device)
    for r0 in range(0, out_features, ROW_TILE):
        r1 = min(r0 + ROW_TILE, out_features)
        y[:, r0:r1] = x @ tile_weight(r0, r1).t()
    return y


# ------------------------------------------------------------------------------------ int4
_int4_ok: dict[str, bool] = {}


def int4_kernel_available(device: torch.device) -> bool:
    """Whether tinygemm runs on `device` (probed once with a 16 x 128 weight)."""
    key = str(device)
    if key not in _int4_ok:
        try:
            if device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 0):
                raise RuntimeError("tinygemm needs Ampere (SM80) or newer")
            q = torch.zeros(16, 128, dtype=torch.int32, device=device)
            p = _convert_int4(q, device)
            sz = torch.zeros(1, 16, 2, dtype=torch.bfloat16, device=device)
            _int4_mm(torch.zeros(1, 128, dtype=torch.bfloat16, device=device), p, 128, sz)
            _int4_ok[key] = True
        except (RuntimeError, NotImplementedError, AttributeError) as e:
            _int4_ok[key] = False
            say_once("int4-kernel", f"int4 on {device}: no tinygemm kernel ({str(e).splitlines()[0]}); "
                                    f"weights are dequantized to bf16 for each matmul")
    return _int4_ok[key]


def _convert_int4(q: torch.Tensor, device: torch.device, inner_k_tiles: int = 8) -> torch.Tensor:
    if device.type == "cuda":  # uint8 [N, K/2], even input in the high nibble
        u8 = ((q[:, ::2] << 4) | q[:, 1::2]).to(torch.uint8)
        return torch.ops.aten._convert_weight_to_int4pack(u8, inner_k_tiles)
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), inner_k_tiles)


def _int4_mm(x: torch.Tensor, packed: torch.Tensor, group: int, sz: torch.Tensor) -> torch.Tensor:
    if x.device.type == "cuda":
        return torch.ops.aten._weight_int4pack_mm(x, packed, group, sz)
    return torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, group, sz)


class Int4Linear:
    """int4 weight-only linear in tinygemm's layout (see module docstring)."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group: int,
                 perm: torch.Tensor | None = None, device: str | torch.device = "cpu",
                 prefill_plain: bool = False, crossover: int = 16):
        """q uint8 [out, in] in 0..15; scale, zero [out, groups] (zero in tinygemm's min form:
        w = (q - 8) * scale + zero), rounded to bf16 here; perm: inputs are gathered x[..., perm]."""
        if group not in INT4_GPU_GROUPS:
            raise ValueError(f"int4 group must be one of {INT4_GPU_GROUPS}, got {group}")
        device = torch.device(device)
        out, n = q.shape
        self.out_features, self.in_features, self.group, self.crossover = out, n, group, crossover
        self.k_pad = -(-n // max(group, 128)) * max(group, 128)  # whole groups, whole 128-input k-tiles
        self.n_pad = -(-out // 16) * 16
        ng, ngp = -(-n // group), self.k_pad // group
        qp = torch.full((self.n_pad, self.k_pad), 8, dtype=torch.int32)
        qp[:out, :n] = q.to(torch.int32)
        sz = torch.zeros(ngp, self.n_pad, 2, dtype=torch.bfloat16)
        sz[:ng, :out, 0] = scale.t().to(torch.bfloat16)
        sz[:ng, :out, 1] = zero.t().to(torch.bfloat16)
        self.scales_and_zeros = sz.to(device)
        self.perm = None if perm is None else perm.to(device=device, dtype=torch.int64)
        self.device = device
        self.use_kernel = int4_kernel_available(device)
        self.packed = _convert_int4(qp.to(device), device) if self.use_kernel else None
        keep_plain = prefill_plain or not self.use_kernel
        # plain nibbles [n_pad, k_pad/2]: input 2j in the low nibble, 2j+1 in the high one
        self.plain = ((qp[:, 0::2]) | (qp[:, 1::2] << 4)).to(torch.uint8).to(device) if keep_plain else None

    # ---- constructors ---------------------------------------------------------------------
    @classmethod
    def from_float(cls, w: torch.Tensor, group: int = GPU_INT4_GROUP, **kw) -> "Int4Linear":
        """Round-to-nearest per group: scale = (max - min) / 15, zero = min + 8 * scale (both bf16),
        q = clamp(round((w - (zero - 8 * scale)) / scale), 0, 15) with the rounded scale/zero."""
        w = w.detach().float().cpu()
        out, n = w.shape
        ng = -(-n // group)
        pad = ng * group - n
        mn = F.pad(w, (0, pad), value=float("inf")).view(out, ng, group).amin(2)
        mx = F.pad(w, (0, pad), value=float("-inf")).view(out, ng, group).amax(2)
        s = ((mx - mn) / 15).to(torch.bfloat16).float()
        z = (mn + 8 * s).to(torch.bfloat16).float()
        lo = z - 8 * s
        inv = torch.where(s > 0, 1 / torch.where(s > 0, s, 1.0), 0.0)
        wp = F.pad(w, (0, pad)).view(out, ng, group)
        q = torch.round((wp - lo[..., None]) * inv[..., None]).clamp_(0, 15).to(torch.uint8)
        return cls(q.view(out, ng * group)[:, :n], s, z, group, **kw)

    @classmethod
    def from_int4_groups(cls, q: torch.Tensor, scale: torch.Tensor, zero_q: torch.Tensor, group: int,
                         perm: torch.Tensor | None = None, **kw) -> "Int4Linear":
        """From w = (q - zero_q) * scale per contiguous group (GPTQ/AWQ/compressed-tensors form):
        tinygemm's zero = (8 - zero_q) * scale. Exact up to the bf16 rounding of scale and zero."""
        s = scale.float()
        return cls(q, s, (8 - zero_q.float()) * s, group, perm=perm, **kw)

    # ---- shapes and bytes -----------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        n = self.scales_and_zeros.numel() * 2
        for t in (self.packed, self.plain):
            n += 0 if t is None else t.numel() * t.element_size()
        return n

    def _sz(self, dtype: torch.dtype) -> torch.Tensor:
        return self.scales_and_zeros if dtype == torch.bfloat16 else self.scales_and_zeros.to(dtype)

    def dequantize(self, r0: int = 0, r1: int | None = None, dtype=torch.float32) -> torch.Tensor:
        """Rows r0:r1 of the padded weight [rows, k_pad] (needs the plain nibbles)."""
        r1 = self.n_pad if r1 is None else r1
        p = self.plain[r0:r1]
        q = torch.stack([p & 15, p >> 4], dim=-1).reshape(r1 - r0, self.k_pad).to(dtype)
        sz = self._sz(dtype)[:, r0:r1]  # [groups, rows, 2]
        s = sz[..., 0].t().repeat_interleave(self.group, 1)
        z = sz[..., 1].t().repeat_interleave(self.group, 1)
        return (q - 8) * s + z

    # ---- compute --------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x2, lead = _rows(x)
        if self.perm is not None:
            x2 = x2.index_select(1, self.perm)
        if self.k_pad != self.in_features:
            x2 = F.pad(x2, (0, self.k_pad - self.in_features))
        if self.use_kernel and (self.plain is None or x2.shape[0] <= self.crossover):
            if x2.device.type == "cuda" and x2.dtype != torch.bfloat16:  # tinygemm on CUDA is bf16 only
                y = _int4_mm(x2.to(torch.bfloat16).contiguous(), self.packed, self.group,
                             self.scales_and_zeros).to(x2.dtype)
            else:
                y = _int4_mm(x2.contiguous(), self.packed, self.group, self._sz(x2.dtype))
        else:
            y = _tiled_matmul(x2, self.n_pad, lambda r0, r1: self.dequantize(r0, r1, x2.dtype))
        return y[:, : self.out_features].reshape(*lead, self.out_features)

    def reference_weight(self) -> torch.Tensor:
        """fp32 [out, in] in input order (perm undone): the weight this op multiplies by."""
        if self.plain is not None:
            w = self.dequantize()
        else:  # recover it through the kernel: identity rows in fp32 (small weights only: tests)
            eye = torch.eye(self.k_pad, device=self.device,
                            dtype=torch.float32 if self.device.type == "cpu" else torch.bfloat16)
            w = _int4_mm(eye, self.packed, self.group, self._sz(torch.float32)).t()
        w = w[: self.out_features, : self.in_features].float()
        if self.perm is None:
            return w
        out = torch.empty_like(w)
        out[:, self.perm] = w
        return out

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.float(), self.reference_weight()).to(x.dtype)


# ------------------------------------------------------------------------------------ int8
_int8_ok: dict[str, bool] = {}


class Int8Linear:
    """int8 per-output-channel weight-only linear: w = q * scale[out]."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, device: str | torch.device = "cpu"):
        device = torch.device(device)
        self.q = q.to(device=device, dtype=torch.int8).contiguous()
        self.scale = scale.to(device=device, dtype=torch.float32).contiguous()
        self.out_features, self.in_features = q.shape
        self.device = device

    @classmethod
    def from_float(cls, w: torch.Tensor, **kw) -> "Int8Linear":
        from .quant import quantize_int8  # symmetric per row: scale = max|w_row| / 127
        q, s = quantize_int8(w.detach().float().cpu())
        return cls(q, s, **kw)

    @property
    def nbytes(self) -> int:
        return self.q.numel() + self.scale.numel() * 4

    def _kernel(self, x2: torch.Tensor) -> torch.Tensor | None:
        key = str(self.device)
        if _int8_ok.get(key) is False:
            return None
        if x2.dtype != torch.float32 and self.in_features % 128:
            return None  # measured on torch 2.13 CPU: bf16 with in % 128 != 0 is wrong or crashes
        try:
            y = torch._weight_int8pack_mm(x2.contiguous(), self.q, self.scale.to(x2.dtype))
            _int8_ok[key] = True
            return y
        except (RuntimeError, NotImplementedError) as e:
            _int8_ok[key] = False
            say_once("int8-kernel", f"int8 on {self.device}: no _weight_int8pack_mm ({str(e).splitlines()[0]}); "
                                    f"dequantized row tiles + matmul instead")
            return None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x2, lead = _rows(x)
        y = self._kernel(x2)
        if y is None:
            y = _tiled_matmul(x2, self.out_features,
                              lambda r0, r1: self.q[r0:r1].to(x2.dtype) * self.scale[r0:r1, None].to(x2.dtype))
        return y.reshape(*lead, self.out_features)

    def reference_weight(self) -> torch.Tensor:
        return self.q.float() * self.scale[:, None]

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.float(), self.reference_weight()).to(x.dtype)


# ------------------------------------------------------------------------------------- fp8
class Fp8BlockLinear:
    """e4m3 weight with one fp32 scale per 128x128 block (the official FP8 checkpoint's layout)."""

    def __init__(self, w8: torch.Tensor, scale_inv: torch.Tensor, device: str | torch.device = "cpu"):
        device = torch.device(device)
        self.w8 = w8.to(device).contiguous()
        self.scale_inv = scale_inv.to(device=device, dtype=torch.float32).contiguous()
        self.out_features, self.in_features = w8.shape
        self.device = device
        self.use_scaled_mm = (device.type == "cuda" and torch.cuda.get_device_capability(device) >= (9, 0)
                              and self.in_features % FP8_BLOCK == 0 and self.out_features % FP8_BLOCK == 0)
        self._checked = False

    @classmethod
    def from_float(cls, w: torch.Tensor, **kw) -> "Fp8BlockLinear":
        """Per 128x128 block: scale = max|w| / 448, e4m3 = round_to_e4m3(w / scale)."""
        w = w.detach().float().cpu()
        R, C = w.shape
        br, bc = -(-R // FP8_BLOCK), -(-C // FP8_BLOCK)
        wp = F.pad(w, (0, bc * FP8_BLOCK - C, 0, br * FP8_BLOCK - R))
        blocks = wp.view(br, FP8_BLOCK, bc, FP8_BLOCK)
        s = blocks.abs().amax(dim=(1, 3)) / E4M3_MAX
        s = torch.where(s > 0, s, 1.0)
        q = (blocks / s[:, None, :, None]).to(torch.float8_e4m3fn).view(br * FP8_BLOCK, bc * FP8_BLOCK)
        return cls(q[:R, :C].contiguous(), s, **kw)

    @classmethod
    def from_fp8(cls, w8: torch.Tensor, scale_inv: torch.Tensor, **kw) -> "Fp8BlockLinear":
        return cls(w8, scale_inv, **kw)

    @property
    def nbytes(self) -> int:
        return self.w8.numel() + self.scale_inv.numel() * 4

    def dequantize(self, r0: int = 0, r1: int | None = None, dtype=torch.float32) -> torch.Tensor:
        r1 = self.out_features if r1 is None else r1
        s = self.scale_inv.repeat_interleave(FP8_BLOCK, 0)[r0:r1].repeat_interleave(FP8_BLOCK, 1)
        return (self.w8[r0:r1].float() * s[:, : self.in_features]).to(dtype)

    def _scaled_mm(self, x2: torch.Tensor) -> torch.Tensor:
        """Activations to e4m3 per 1x128 block, then one blockwise-scaled fp8 GEMM (SM90+)."""
        M, K = x2.shape
        xb = x2.float().view(M, K // FP8_BLOCK, FP8_BLOCK)
        xs = (xb.abs().amax(-1) / E4M3_MAX).clamp_min(1e-12)               # [M, K/128]
        xq = (xb / xs[..., None]).to(torch.float8_e4m3fn).view(M, K)
        return torch._scaled_mm(xq, self.w8.t(), scale_a=xs.t().contiguous().t(),
                                scale_b=self.scale_inv.t(), out_dtype=x2.dtype)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x2, lead = _rows(x)
        y = None
        if self.use_scaled_mm:
            try:
                y = self._scaled_mm(x2)
                if not self._checked:  # the blockwise-scale conventions, checked once against the plain path
                    ref = _tiled_matmul(x2, self.out_features, lambda r0, r1: self.dequantize(r0, r1, x2.dtype))
                    err = float((y.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-12))
                    if not err < 0.05:
                        raise RuntimeError(f"relative error {err:.3f} against the dequantized weight")
                    self._checked = True
            except (RuntimeError, NotImplementedError) as e:
                self.use_scaled_mm, y = False, None
                say_once("fp8-scaled-mm", f"fp8 on {self.device}: torch._scaled_mm blockwise unavailable "
                                          f"({str(e).splitlines()[0]}); dequantized row tiles + matmul instead")
        if y is None:
            y = _tiled_matmul(x2, self.out_features, lambda r0, r1: self.dequantize(r0, r1, x2.dtype))
        return y.reshape(*lead, self.out_features)

    def reference_weight(self) -> torch.Tensor:
        return self.dequantize()

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.float(), self.reference_weight()).to(x.dtype)


GPU_FORMATS = {"int4": Int4Linear, "int8": Int8Linear, "fp8": Fp8BlockLinear}


def gpu_linear_from_float(w: torch.Tensor, fmt: str, group: int = GPU_INT4_GROUP, **kw):
    """One weight in GPU format `fmt` (int4 | int8 | fp8)."""
    if fmt == "int4":
        return Int4Linear.from_float(w, group, **kw)
    if fmt in GPU_FORMATS:
        return GPU_FORMATS[fmt].from_float(w, **kw)
    raise ValueError(f"unknown GPU weight format {fmt!r}; expected int4, int8 or fp8")


def gpu_bits_per_weight(fmt: str, group: int = GPU_INT4_GROUP) -> float:
    """Stored bits per weight of a large matrix (metadata included)."""
    return {"int4": 4 + 32 / group, "int8": 8.0, "fp8": 8 + 32 / FP8_BLOCK**2, "bf16": 16.0}[fmt]
