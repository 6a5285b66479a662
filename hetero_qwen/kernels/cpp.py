"""Thin ctypes loader for the C++ kernels in csrc/ (built into `_hq_kernels*.so` by setup.py).

Every wrapper checks dtype, shape and contiguity, then writes into a preallocated output.
When the library is missing, `available()` is False and `load_error()` says in one line what
to do; the dispatcher then uses the Numba kernels.
"""

from __future__ import annotations

import ctypes
import glob
import os

import torch

from ..formats import INT4_GROUP
from .quant import PackedWeight

BUILD_HINT = ("hetero-qwen C++ kernels are not built: run `pip install --force-reinstall --no-deps .` "
              "(or `python setup.py build_ext --inplace` in a checkout) with g++/clang++ installed; "
              "using the Numba kernels meanwhile")
FMT_CODE = {"bf16": 0, "int8": 1, "int4": 2}
ISA_CODE = {"scalar": 0, "avx2": 1, "avx512": 2, "avx512bf16": 3}

_lib = None
_err: str | None = None
_tried = False
LIB_DIR = os.path.dirname(__file__)


def _load(libdir: str | None = None):
    global _lib, _err, _tried, _lib_linear, _lib_ffn
    _tried = True
    _lib, _err = None, None
    _lib_linear, _lib_ffn = _no_lib, _no_lib
    if os.environ.get("HETERO_QWEN_NO_CPP"):
        _err = BUILD_HINT + " (disabled by HETERO_QWEN_NO_CPP)"
        return
    paths = sorted(glob.glob(os.path.join(libdir or LIB_DIR, "_hq_kernels*.so")))
    if not paths:
        _err = BUILD_HINT
        return
    try:
        lib = ctypes.CDLL(paths[0])
    except OSError as e:
        _err = f"{BUILD_HINT} ({paths[0]} failed to load: {e})"
        return
    P, I, L = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
    lib.hq_isa_name.restype = ctypes.c_char_p
    lib.hq_linear.argtypes = [I, P, P, L, L, P, I, P]
    lib.hq_ffn.argtypes = [I, P, P, P, P, P, P, L, L, P, I, P, P]
    lib.hq_deltanet_step.argtypes = [I, L, I, I, P, P, P, P, P, P, P, I, I, L, L, P, P]
    lib.hq_rmsnorm.argtypes = [L, L, P, L, P, ctypes.c_float, P]
    lib.hq_gated_rmsnorm.argtypes = [L, L, P, P, P, ctypes.c_float, P]
    F = ctypes.c_float
    lib.hq_attn_decode.argtypes = [I, I, L, L, P, L, P, P, P, P, F, P, P, P, P, I, L, L, F, I, P]
    lib.hq_set_threads.argtypes = [I]
    lib.hq_tune.argtypes = [I, L]
    lib.hq_tune.restype = L
    lib.hq_force_isa.argtypes = [I]
    lib.hq_isa_supported.argtypes = [I]
    if lib.hq_abi_version() != 1 or lib.hq_group_size() != INT4_GROUP:
        _err = f"{BUILD_HINT} (stale build: ABI/group size mismatch in {paths[0]})"
        return
    _lib = lib
    _lib_linear, _lib_ffn = lib.hq_linear, lib.hq_ffn  # bound once: no attribute lookups per call


def _no_lib(*args):
    raise RuntimeError(load_error())


_lib_linear = _lib_ffn = _no_lib


def reload(libdir: str | None = None) -> bool:
    """Load (again), optionally from another directory (tests use this to simulate no build)."""
    _load(libdir)
    return _lib is not None


def lib():
    if not _tried:
        _load()
    if _lib is None:
        raise RuntimeError(_err)
    return _lib


def available() -> bool:
    if not _tried:
        _load()
    return _lib is not None


def load_error() -> str | None:
    if not _tried:
        _load()
    return _err


def isa() -> str:
    return lib().hq_isa_name().decode()


def int8_activations() -> bool:
    """Whether the ISA copy in use quantizes int8-format activations to int8 per 64-group
    (AVX512-VNNI dot products; quant.int8_linear_exact is its arithmetic) instead of fp32."""
    return bool(lib().hq_isa_int8dot())


def isa_supported(name: str) -> bool:
    return bool(lib().hq_isa_supported(ISA_CODE[name]))


def force_isa(name: str | None) -> None:
    """Pin the ISA copy of the kernels (None: best available). Raises if unsupported here."""
    if lib().hq_force_isa(-1 if name is None else ISA_CODE[name]) != 0:
        raise RuntimeError(f"ISA {name} not supported by this CPU / build")


def set_threads(n: int) -> int:
    return lib().hq_set_threads(int(n))


def get_threads() -> int:
    return lib().hq_get_threads()


TUNE_KEYS = {"prefetch_bytes": 0, "min_split_bytes": 1, "spin_us": 2, "prefetch_long_block": 3,
             "prefetch_l2_row": 4, "rows_per_block": 5}


def tune(key: str, value: int = -1) -> int:
    """Set a scheduling knob of the C++ kernels (benchmarks); returns the previous value.

    prefetch_bytes: software prefetch distance (0 = off); min_split_bytes: a matrix is split
    over threads only with at least this many bytes per thread; spin_us: how long an idle
    worker spins before it sleeps; prefetch_long_block: row blocks (4 rows at batch 1) larger
    than this are prefetched as one stream per row instead of one linear stream;
    prefetch_l2_row: rows larger than this (bytes) are prefetched into L2 only (prefetcht2)
    instead of L1; rows_per_block: rows a batch-1 GEMV works on at once (1, 2, 4 or 8;
    0 = the format's default). value < 0 only reads.
    """
    return int(lib().hq_tune(TUNE_KEYS[key], int(value)))


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _check(t: torch.Tensor, name: str, dtype: torch.dtype, shape: tuple) -> None:
    if t.dtype != dtype or t.shape != shape or not t.is_contiguous() or t.device.type != "cpu":
        raise ValueError(f"{name}: expected contiguous cpu {dtype} {tuple(shape)}, got "
                         f"{t.device.type} {t.dtype} {tuple(t.shape)} contiguous={t.is_contiguous()}")


def _check_weight(w: PackedWeight, name: str) -> None:
    o, n = w.out_features, w.in_features
    if w.fmt == "bf16":
        _check(w.data, name, torch.bfloat16, (o, n))
    elif w.fmt == "int8":
        _check(w.data, name, torch.int8, (o, n))
        _check(w.meta, name + ".scale", torch.float32, (o,))
    elif w.fmt == "int4":
        ng = -(-n // INT4_GROUP)
        _check(w.data, name, torch.uint8, (o, ng * INT4_GROUP // 2))
        _check(w.meta, name + ".meta", torch.float16, (o, ng, 2))
    else:
        raise ValueError(f"{name}: C++ kernels support bf16, int8, int4, not {w.fmt!r}")


def _weight_args(w: PackedWeight, name: str) -> tuple:
    """(format code, data pointer, meta pointer) of a validated weight, cached on the weight.

    Decode makes ~50 kernel calls per token, so the per-call path checks only the activations;
    the cache is keyed by the tensors' identity and pointers, so replacing or reallocating
    w.data / w.meta re-validates.
    """
    key = (id(w.data), id(w.meta), w.data.data_ptr(), w.fmt)
    c = getattr(w, "_cpp_args", None)
    if c is None or c[0] != key:
        _check_weight(w, name)
        c = (key, (FMT_CODE[w.fmt], w.data.data_ptr(), _ptr(w.meta)))
        w._cpp_args = c
    return c[1]


def linear(x: torch.Tensor, w: PackedWeight, out: torch.Tensor | None = None) -> torch.Tensor:
    """x [B, in] fp32 contiguous -> out [B, out] fp32."""
    if _lib is None:
        lib()  # loads, or raises the build hint
    B = x.shape[0]
    _check(x, "x", torch.float32, (B, w.in_features))
    fmt, wp, mp = _weight_args(w, "w")
    if out is None:
        out = torch.empty(B, w.out_features, dtype=torch.float32)
    else:
        _check(out, "out", torch.float32, (B, w.out_features))
    _lib_linear(fmt, wp, mp, w.out_features, w.in_features, x.data_ptr(), B, out.data_ptr())
    return out


def ffn(x: torch.Tensor, gate: PackedWeight, up: PackedWeight, down: PackedWeight,
        out: torch.Tensor | None = None, hidden: torch.Tensor | None = None) -> torch.Tensor:
    """x [B, H] fp32 -> out [B, H] fp32; hidden [B, I] fp32 scratch (allocated if None)."""
    if _lib is None:
        lib()
    B, H = x.shape
    I = gate.out_features
    if not (gate.fmt == up.fmt == down.fmt):
        raise ValueError("gate/up/down must share one format")
    if (gate.in_features, up.out_features, up.in_features, down.out_features, down.in_features) != (H, I, H, H, I):
        raise ValueError("gate/up [I, H] and down [H, I] shapes do not match x")
    _check(x, "x", torch.float32, (B, H))
    fmt, gp, gm = _weight_args(gate, "gate")
    _, upp, um = _weight_args(up, "up")
    _, dp, dm = _weight_args(down, "down")
    if out is None:
        out = torch.empty(B, H, dtype=torch.float32)
    else:
        _check(out, "out", torch.float32, (B, H))
    if hidden is None:
        hidden = torch.empty(B, I, dtype=torch.float32)
    else:
        _check(hidden, "hidden", torch.float32, (B, I))
    _lib_ffn(fmt, gp, gm, upp, um, dp, dm, H, I, x.data_ptr(), B, hidden.data_ptr(), out.data_ptr())
    return out


def deltanet_decode_step(mixed_qkv, a, b, conv_weight, conv_state, A_log, dt_bias, state,
                         out: torch.Tensor | None = None) -> torch.Tensor:
    """Fused DeltaNet decode token (see reference.deltanet_decode_step); all fp32 contiguous."""
    from .reference import deltanet_heads

    B, conv_dim = mixed_qkv.shape
    Hk, Hv, Dk, Dv = deltanet_heads(conv_dim, state)
    K = conv_weight.shape[1]
    L = conv_state.shape[-1]
    f32 = torch.float32
    _check(mixed_qkv, "mixed_qkv", f32, (B, conv_dim))
    _check(a, "a", f32, (B, Hv))
    _check(b, "b", f32, (B, Hv))
    _check(conv_weight, "conv_weight", f32, (conv_dim, K))
    _check(conv_state, "conv_state", f32, (B, conv_dim, L))
    _check(A_log, "A_log", f32, (Hv,))
    _check(dt_bias, "dt_bias", f32, (Hv,))
    _check(state, "state", f32, (B, Hv, Dk, Dv))
    if L < K - 1:
        raise ValueError(f"conv_state holds {L} inputs, needs at least {K - 1}")
    if out is None:
        out = torch.empty(B, Hv, Dv, dtype=f32)
    _check(out, "out", f32, (B, Hv, Dv))
    rc = lib().hq_deltanet_step(B, conv_dim, K, L, _ptr(mixed_qkv), _ptr(a), _ptr(b), _ptr(conv_weight),
                                _ptr(conv_state), _ptr(A_log), _ptr(dt_bias), Hk, Hv, Dk, Dv,
                                _ptr(state), _ptr(out))
    if rc != 0:
        raise ValueError("hq_deltanet_step rejected its shapes")
    return out


def rmsnorm(x: torch.Tensor, w: torch.Tensor, eps: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """Row-wise x * rsqrt(mean(x^2) + eps) * w; x [rows, n] fp32 with unit column stride (rows
    may be strided), w [n] fp32 (pass 1 + weight for the model's zero-centred norms)."""
    rows, n = x.shape
    if x.dtype != torch.float32 or x.device.type != "cpu" or x.stride(-1) != 1 or (rows > 1 and x.stride(0) < n):
        raise ValueError(f"x: expected cpu float32 rows with unit column stride, got {x.dtype} "
                         f"strides {tuple(x.stride())}")
    _check(w, "w", torch.float32, (n,))
    if out is None:
        out = torch.empty(rows, n, dtype=torch.float32)
    _check(out, "out", torch.float32, (rows, n))
    lib().hq_rmsnorm(rows, n, x.data_ptr(), x.stride(0) if rows > 1 else n, w.data_ptr(), eps, out.data_ptr())
    return out


def gated_rmsnorm(x: torch.Tensor, z: torch.Tensor, w: torch.Tensor, eps: float,
                  out: torch.Tensor | None = None) -> torch.Tensor:
    """Per row: w * rmsnorm(x) * silu(z); x, z [rows, n] fp32, w [n] fp32."""
    rows, n = x.shape
    _check(x, "x", torch.float32, (rows, n))
    _check(z, "z", torch.float32, (rows, n))
    _check(w, "w", torch.float32, (n,))
    if out is None:
        out = torch.empty(rows, n, dtype=torch.float32)
    _check(out, "out", torch.float32, (rows, n))
    lib().hq_gated_rmsnorm(rows, n, x.data_ptr(), z.data_ptr(), w.data_ptr(), eps, out.data_ptr())
    return out


def attn_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_w1: torch.Tensor, k_w1: torch.Tensor,
                eps: float, cos: torch.Tensor, sin: torch.Tensor, K: torch.Tensor, V: torch.Tensor, pos: int,
                scale: float, gated: bool, out: torch.Tensor | None = None) -> torch.Tensor:
    """One token of gated attention (the C++ twin of the decode step in model/layers.Attention).

    q [nh, qld] fp32 (each row: q[D], then the gate[D] when gated), k / v [nkv, D] fp32;
    q_w1 / k_w1 [D] = 1 + the q/k norm weights; cos / sin [rotary_dim]; K / V the layer's cache
    [nkv, cap, D] (bf16 or fp32), written at `pos`; attends over keys 0..pos. -> out [nh, D] fp32.
    """
    nh, qld = q.shape
    nkv, cap, D = K.shape
    if q.dtype != torch.float32 or q.stride(-1) != 1 or (nh > 1 and q.stride(0) != qld):
        raise ValueError("q: expected cpu float32 [nh, qld] rows")
    _check(k, "k", torch.float32, (nkv, D))
    _check(v, "v", torch.float32, (nkv, D))
    _check(q_w1, "q_w1", torch.float32, (D,))
    _check(k_w1, "k_w1", torch.float32, (D,))
    rd = cos.numel()
    _check(cos, "cos", torch.float32, (rd,))
    _check(sin, "sin", torch.float32, (rd,))
    if K.dtype not in (torch.bfloat16, torch.float32) or V.dtype != K.dtype:
        raise ValueError(f"K/V cache: expected bf16 or fp32, got {K.dtype}/{V.dtype}")
    _check(K, "K", K.dtype, (nkv, cap, D))
    _check(V, "V", K.dtype, (nkv, cap, D))
    if qld < D * (2 if gated else 1):
        raise ValueError("q rows are shorter than the head (and its gate)")
    if out is None:
        out = torch.empty(nh, D, dtype=torch.float32)
    _check(out, "out", torch.float32, (nh, D))
    rc = lib().hq_attn_decode(nh, nkv, D, rd, q.data_ptr(), qld, k.data_ptr(), v.data_ptr(), q_w1.data_ptr(),
                              k_w1.data_ptr(), eps, cos.data_ptr(), sin.data_ptr(), K.data_ptr(), V.data_ptr(),
                              int(K.dtype == torch.bfloat16), cap, pos, scale, int(gated), out.data_ptr())
    if rc != 0:
        raise ValueError("hq_attn_decode rejected its shapes (heads, position or rotary dim)")
    return out
