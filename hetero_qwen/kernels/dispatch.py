"""Pick a backend per (op, format, batch): C++, Numba, torch's own CPU kernels, or the reference.

A static rule (from bench/kernels.py on the dev machine, AMD EPYC Zen 4, 2 cores), no
autotuning at startup:

  op                 batch <= 8 (decode, speculative verify)    batch > 8 (prefill)
  linear / ffn bf16  cpp, else numba                           torch: F.linear bf16 (oneDNN)
  linear / ffn int8  cpp, else numba                           torch: bf16 tiles + oneDNN GEMM
  linear / ffn int4  cpp, else numba                           torch: dequantize 1024-row tiles to
                                                               bf16 + F.linear (compute bound there)
  deltanet_step      cpp, else numba                           (decode only)

Decode GEMVs are memory bound and torch's CPU paths reach well under half the bandwidth at
batch 1 (bench/kernels.py prints the ratio), so C++ wins there; prefill is compute bound and
oneDNN's blocked GEMM wins. Numba is only the fallback: it was never faster than C++ here.

Forcing: env HETERO_QWEN_KERNELS=cpp|numba|torch|reference, or `force_backend(name)` (None
restores the rule). A forced `cpp` without the build raises with the build hint.

Threads: `set_threads(n)` sizes the C++ pool, Numba and torch together (the profile's
`threads`). The three never run at the same time within a decode step, so one size for all
avoids oversubscription; the engine must not call torch.set_num_threads separately.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from .. import measured_defaults
from . import cpp, reference
from . import numba_kernels as nk
from .quant import PackedWeight, dequantize_int4, dequantize_int8

BACKENDS = ("cpp", "numba", "torch", "reference")
# Forwards of at most this many tokens are GEMV-shaped (decode, speculative verify): our kernels'
# thread pool runs them (and the engine keeps torch single-threaded meanwhile); larger batches
# (prefill) go to torch's compute-bound GEMMs.
SMALL_BATCH = measured_defaults.SMALL_BATCH.value

_forced: str | None = None
_threads: int | None = None


def force_backend(name: str | None) -> None:
    """Force every op onto one backend (tests, debugging); None restores the static table."""
    global _forced
    if name is not None and name not in BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r}; expected one of {', '.join(BACKENDS)}")
    _forced = name


def forced_backend() -> str | None:
    if _forced is not None:
        return _forced
    env = os.environ.get("HETERO_QWEN_KERNELS", "").strip().lower()
    if env and env not in BACKENDS:
        raise ValueError(f"HETERO_QWEN_KERNELS={env!r}; expected one of {', '.join(BACKENDS)}")
    return env or None


def choose(op: str, fmt: str | None, batch: int) -> str:
    """Backend for op in ("linear", "ffn", "deltanet") at this format and batch."""
    f = forced_backend()
    if f is not None:
        if f == "cpp" and not cpp.available():
            raise RuntimeError(cpp.load_error())
        if f == "torch" and op == "deltanet":
            return "reference"  # torch's own DeltaNet step is the reference code
        return f
    if op != "deltanet" and batch > SMALL_BATCH:
        return "torch"
    return "cpp" if cpp.available() else "numba"


def set_threads(n: int) -> int:
    """One thread count for the C++ pool, Numba and torch (see module docstring)."""
    global _threads
    n = max(1, int(n))
    torch.set_num_threads(n)
    nk.set_threads(n)
    if cpp.available():
        cpp.set_threads(n)
    _threads = n
    return n


def get_threads() -> int:
    return _threads if _threads is not None else torch.get_num_threads()


def _ensure_threads() -> None:
    if _threads is None:
        set_threads(torch.get_num_threads())


# ------------------------------------------------------------------------ torch paths
def _torch_linear(x: torch.Tensor, w: PackedWeight) -> torch.Tensor:
    """Prefill-sized batches: oneDNN's bf16 GEMM. Quantized weights are dequantized to bf16 one
    1024-row tile at a time (bounded temporaries); torch's own `_weight_int8pack_mm` runs a scalar
    loop on fp32 activations and measured ~25x slower here at 128 tokens."""
    if w.fmt == "bf16":
        return F.linear(x.to(torch.bfloat16), w.data).float()
    if w.fmt not in ("int8", "int4"):
        raise ValueError(f"unsupported CPU weight format {w.fmt!r}")
    out = torch.empty(x.shape[0], w.out_features, dtype=torch.float32)
    xb = x.to(torch.bfloat16)
    for r0 in range(0, w.out_features, 1024):
        r1 = min(r0 + 1024, w.out_features)
        if w.fmt == "int8":
            wt = dequantize_int8(w.data[r0:r1], w.meta[r0:r1])
        else:
            wt = dequantize_int4(w.data[r0:r1], w.meta[r0:r1], w.in_features)
        out[:, r0:r1] = F.linear(xb, wt.to(torch.bfloat16)).float()
    return out


# ------------------------------------------------------------------------------ ops
def linear(x: torch.Tensor, w: PackedWeight, backend: str | None = None) -> torch.Tensor:
    """x [B, in] (fp32 or bf16) -> [B, out] fp32."""
    _ensure_threads()
    be = backend or choose("linear", w.fmt, x.shape[0])
    if be == "cpp":
        return cpp.linear(x.float().contiguous(), w)
    if be == "numba":
        return nk.linear(x, w)
    if be == "torch":
        return _torch_linear(x, w)
    return reference.linear(x, w)


def ffn(x: torch.Tensor, gate: PackedWeight, up: PackedWeight, down: PackedWeight,
        backend: str | None = None) -> torch.Tensor:
    """SwiGLU FFN x [B, H] -> [B, H] fp32."""
    _ensure_threads()
    be = backend or choose("ffn", gate.fmt, x.shape[0])
    if be == "cpp":
        return cpp.ffn(x.float().contiguous(), gate, up, down)
    if be == "numba":
        return nk.ffn(x, gate, up, down)
    if be == "torch":
        h = F.silu(_torch_linear(x, gate)) * _torch_linear(x, up)
        return _torch_linear(h, down)
    return reference.ffn_decode(x, gate, up, down)


def deltanet_decode_step(mixed_qkv, a, b, conv_weight, conv_state, A_log, dt_bias, state,
                         backend: str | None = None) -> torch.Tensor:
    """Fused DeltaNet decode token; updates conv_state and state in place; returns o [B, Hv, Dv]."""
    _ensure_threads()
    be = backend or choose("deltanet", None, mixed_qkv.shape[0])
    f = lambda t: t.float().contiguous()  # noqa: E731
    if be == "cpp":
        return cpp.deltanet_decode_step(f(mixed_qkv), f(a), f(b), f(conv_weight), conv_state,
                                        f(A_log), f(dt_bias), state)
    if be == "numba":
        return nk.deltanet_decode_step(mixed_qkv, a, b, conv_weight, conv_state, A_log, dt_bias, state)
    return reference.deltanet_decode_step(mixed_qkv, a, b, conv_weight, conv_state, A_log, dt_bias, state)


# ------------------------------------------------------------------------------ info
def cpu_features() -> dict:
    """CPU model and the SIMD flags the kernels care about (from /proc/cpuinfo on Linux)."""
    model, flags = "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model == "unknown":
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    want = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "amx_tile")
    return {"cpu": model, "cores": os.cpu_count(), "isa": [f for f in want if f in flags]}


def kernel_info() -> dict:
    """For `hetero-qwen info`: backend in use for decode, the ISA copy of the C++ kernels, threads."""
    feats = cpu_features()
    forced = forced_backend()
    info = {
        "backend": forced or ("cpp" if cpp.available() else "numba"),
        "forced": forced is not None,
        "cpp_available": cpp.available(),
        "cpp_isa": cpp.isa() if cpp.available() else None,
        "int8_activations": ("int8 per 64 inputs (VNNI)" if cpp.available() and cpp.int8_activations()
                             else "fp32"),
        "cpu": feats["cpu"],
        "cpu_isa": feats["isa"],
        "threads": get_threads(),
        "prefill_backend": "torch (oneDNN bf16 GEMM; int8/int4 dequantized in bf16 tiles) above batch %d" % SMALL_BATCH,
    }
    if not cpp.available():
        info["cpp_error"] = cpp.load_error()
    return info
