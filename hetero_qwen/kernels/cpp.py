"""Thin ctypes loader for the C++ kernels in csrc/ (built into `_hq_kernels*.so` by setup.py).

Every entry point is declared once in abi.py (argument types, tensor dtypes, shapes and layout);
every call goes through its checks. The wrappers here allocate outputs and derive the sizes.
A library whose entry points differ from abi.py (a stale build) is refused with a one-line hint.
When the library is missing, `available()` is False and `load_error()` says in one line what
to do; the dispatcher then uses the Numba kernels.
"""

from __future__ import annotations

import ctypes
import glob
import os

import torch

from .. import measured_defaults
from ..formats import INT4_GROUP
from . import abi
from .quant import PackedWeight

BUILD_HINT = ("hetero-qwen C++ kernels are not built: run `pip install --force-reinstall --no-deps .` "
              "(or `python setup.py build_ext --inplace` in a checkout) with g++/clang++ installed; "
              "using the Numba kernels meanwhile")
FMT_CODE = abi.FMT_CODE
ISA_CODE = {"scalar": 0, "avx2": 1, "avx512": 2, "avx512bf16": 3}

_lib = None  # the loaded library; calls go through the declarations in abi.py
_err: str | None = None
_tried = False
LIB_DIR = os.path.dirname(__file__)


def _load(libdir: str | None = None):
    global _lib, _err, _tried
    _tried = True
    _lib, _err = None, None
    for k in abi.KERNELS:
        k.attach(None, _no_lib)
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
    _err = stale_build(lib, paths[0])
    if _err is None:
        for k in abi.KERNELS:
            k.attach(lib)
        for key, m in measured_defaults.KERNEL_TUNING.items():
            abi.HQ_TUNE(TUNE_KEYS[key], m.value)
        _lib = lib


def stale_build(lib, path: str) -> str | None:
    """Why the library at `path` does not match kernels/abi.py (one line), or None when it does."""
    rebuild = (f"{path} is a stale build (its entry points differ from hetero_qwen/kernels/abi.py): rebuild "
               "with `python setup.py build_ext --inplace` (or `pip install --force-reinstall --no-deps .`); "
               "using the Numba kernels meanwhile")
    try:
        sig = lib.hq_abi_signature
    except AttributeError:
        return rebuild
    sig.argtypes, sig.restype = [], ctypes.c_char_p
    if sig().decode() != abi.signature():
        return rebuild
    lib.hq_group_size.argtypes, lib.hq_group_size.restype = [], ctypes.c_int
    if lib.hq_group_size() != INT4_GROUP:
        return f"{path} was built for int4 groups of {lib.hq_group_size()}, formats.INT4_GROUP is {INT4_GROUP}: rebuild it"
    return None


def _no_lib(*args):
    raise RuntimeError(load_error())


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
    lib()
    return abi.HQ_ISA_NAME().decode()


def int8_activations() -> bool:
    """Whether the ISA copy in use quantizes int8-format activations to int8 per 64-group
    (AVX512-VNNI dot products; quant.int8_linear_exact is its arithmetic) instead of fp32."""
    lib()
    return bool(abi.HQ_ISA_INT8DOT())


def isa_supported(name: str) -> bool:
    lib()
    return bool(abi.HQ_ISA_SUPPORTED(ISA_CODE[name]))


def force_isa(name: str | None) -> None:
    """Pin the ISA copy of the kernels (None: best available). Raises if unsupported here."""
    lib()
    if abi.HQ_FORCE_ISA(-1 if name is None else ISA_CODE[name]) != 0:
        raise RuntimeError(f"ISA {name} not supported by this CPU / build")


def set_threads(n: int) -> int:
    lib()
    return abi.HQ_SET_THREADS(int(n))


def get_threads() -> int:
    lib()
    return abi.HQ_GET_THREADS()


TUNE_KEYS = {"prefetch_bytes": 0, "min_split_bytes": 1, "spin_us": 2, "prefetch_long_block": 3,
             "prefetch_l2_row": 4, "rows_per_block": 5, "rows_per_block_batch": 6}


def tune(key: str, value: int = -1) -> int:
    """Set a scheduling knob of the C++ kernels (benchmarks); returns the previous value.

    prefetch_bytes: software prefetch distance (0 = off); min_split_bytes: a matrix is split
    over threads only with at least this many bytes per thread; spin_us: how long an idle
    worker spins before it sleeps; prefetch_long_block: row blocks (4 rows at batch 1) larger
    than this are prefetched as one stream per row instead of one linear stream;
    prefetch_l2_row: rows larger than this (bytes) are prefetched into L2 only (prefetcht2)
    instead of L1; rows_per_block: rows a batch-1 GEMV works on at once (1, 2, 4 or 8;
    0 = the format's default); rows_per_block_batch: the same at batch 2..8 (1, 2, 3 or 4).
    value < 0 only reads. Defaults: measured_defaults.py.
    """
    lib()
    return int(abi.HQ_TUNE(TUNE_KEYS[key], int(value)))


def bind_linear(w: PackedWeight, **more) -> abi.BoundKernel:
    """hq_linear with weight w (and `more`, e.g. B=1, y=buffer) bound and checked once."""
    if w.fmt not in FMT_CODE:
        raise abi.KernelArgumentError(f"hq_linear: w: C++ kernels support bf16, int8, int4, not {w.fmt!r}")
    return abi.HQ_LINEAR.bind(fmt=FMT_CODE[w.fmt], w=w.data, meta=w.meta, n_out=w.out_features,
                              n_in=w.in_features, **more)


def bound_linear(w: PackedWeight) -> abi.BoundKernel:
    """hq_linear with this weight bound, cached on the weight: call it with (x [B, in], B,
    y [B, out]). Replacing or reallocating w.data / w.meta binds (and checks) again."""
    key = (id(w.data), id(w.meta), w.data.data_ptr(), w.fmt)
    c = getattr(w, "_hq_linear", None)
    if c is None or c[0] != key:
        c = (key, bind_linear(w))
        w._hq_linear = c
    return c[1]


def linear(x: torch.Tensor, w: PackedWeight, out: torch.Tensor | None = None) -> torch.Tensor:
    """x [B, in] fp32 contiguous -> out [B, out] fp32."""
    if _lib is None:
        lib()  # loads, or raises the build hint
    B = x.shape[0]
    if out is None:
        out = torch.empty(B, w.out_features, dtype=torch.float32)
    bound_linear(w)(x, B, out)
    return out


def ffn(x: torch.Tensor, gate: PackedWeight, up: PackedWeight, down: PackedWeight,
        out: torch.Tensor | None = None, hidden: torch.Tensor | None = None) -> torch.Tensor:
    """x [B, H] fp32 -> out [B, H] fp32; hidden [B, I] fp32 scratch (allocated if None)."""
    if _lib is None:
        lib()
    B, H = x.shape
    I = gate.out_features
    if not (gate.fmt == up.fmt == down.fmt):
        raise abi.KernelArgumentError(f"hq_ffn: gate/up/down must share one format, got {gate.fmt}/{up.fmt}/{down.fmt}")
    if out is None:
        out = torch.empty(B, H, dtype=torch.float32)
    if hidden is None:
        hidden = torch.empty(B, I, dtype=torch.float32)
    abi.HQ_FFN(FMT_CODE.get(gate.fmt, -1), gate.data, gate.meta, up.data, up.meta, down.data, down.meta,
               H, I, x, B, hidden, out)
    return out


def deltanet_decode_step(mixed_qkv, a, b, conv_weight, conv_state, A_log, dt_bias, state,
                         out: torch.Tensor | None = None) -> torch.Tensor:
    """Fused DeltaNet decode token (see reference.deltanet_decode_step); all fp32 contiguous."""
    from .reference import deltanet_heads

    lib()
    B, conv_dim = mixed_qkv.shape
    Hk, Hv, Dk, Dv = deltanet_heads(conv_dim, state)
    if out is None:
        out = torch.empty(B, Hv, Dv, dtype=torch.float32)
    abi.HQ_DELTANET_STEP(B, conv_dim, conv_weight.shape[-1], conv_state.shape[-1], mixed_qkv, a, b, conv_weight,
                         conv_state, A_log, dt_bias, Hk, Hv, Dk, Dv, state, out)
    return out


def rmsnorm(x: torch.Tensor, w: torch.Tensor, eps: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """Row-wise x * rsqrt(mean(x^2) + eps) * w; x [rows, n] fp32 with unit column stride (rows
    may be strided), w [n] fp32 (pass 1 + weight for the model's zero-centred norms)."""
    lib()
    rows, n = x.shape
    if out is None:
        out = torch.empty(rows, n, dtype=torch.float32)
    abi.HQ_RMSNORM(rows, n, x, x.stride(0) if rows > 1 else n, w, eps, out)
    return out


def gated_rmsnorm(x: torch.Tensor, z: torch.Tensor, w: torch.Tensor, eps: float,
                  out: torch.Tensor | None = None) -> torch.Tensor:
    """Per row: w * rmsnorm(x) * silu(z); x, z [rows, n] fp32, w [n] fp32."""
    lib()
    rows, n = x.shape
    if out is None:
        out = torch.empty(rows, n, dtype=torch.float32)
    abi.HQ_GATED_RMSNORM(rows, n, x, z, w, eps, out)
    return out


def attn_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_w1: torch.Tensor, k_w1: torch.Tensor,
                eps: float, cos: torch.Tensor, sin: torch.Tensor, K: torch.Tensor, V: torch.Tensor, pos: int,
                scale: float, gated: bool, out: torch.Tensor | None = None) -> torch.Tensor:
    """One token of gated attention (the C++ twin of the decode step in model/layers.Attention).

    q [nh, qld] fp32 (each row: q[D], then the gate[D] when gated), k / v [nkv, D] fp32;
    q_w1 / k_w1 [D] = 1 + the q/k norm weights; cos / sin [rotary_dim]; K / V the layer's cache
    [nkv, cap, D] (bf16 or fp32), written at `pos`; attends over keys 0..pos. -> out [nh, D] fp32.
    """
    lib()
    nh, qld = q.shape
    nkv, cap, D = K.shape
    if out is None:
        out = torch.empty(nh, D, dtype=torch.float32)
    abi.HQ_ATTN_DECODE(nh, nkv, D, cos.numel(), q, qld, k, v, q_w1, k_w1, eps, cos, sin, K, V,
                       int(K.dtype == torch.bfloat16), cap, pos, scale, int(gated), out)
    return out
