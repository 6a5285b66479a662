"""CPU kernels and quantized weight formats (C++ via ctypes, Numba fallback, torch for prefill).

Public API for the engine:
    CpuFFN(gate_w, up_w, down_w, fmt)(x) -> [B, H] fp32
    CpuLinear(w, fmt)(x) -> [B, out] fp32
    deltanet_decode_step(mixed_qkv, a, b, conv_weight, conv_state, A_log, dt_bias, state) -> o
    set_threads(n), kernel_info(), force_backend(name)
"""

from .dispatch import (deltanet_decode_step, ffn, force_backend, kernel_info, linear,
                       set_threads)
from .ops import CpuFFN, CpuLinear
from .quant import PackedWeight

__all__ = ["CpuFFN", "CpuLinear", "PackedWeight", "deltanet_decode_step", "ffn", "force_backend",
           "kernel_info", "linear", "set_threads"]
