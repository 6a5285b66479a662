"""Shared fixtures for the kernel tests: every available backend x ISA x thread count."""

from __future__ import annotations

import pytest

from hetero_qwen.kernels import cpp, dispatch


def backend_params():
    out = [pytest.param(("numba", None), id="numba")]
    if cpp.available():
        for isa in cpp.ISA_CODE:
            if cpp.isa_supported(isa):
                out.append(pytest.param(("cpp", isa), id=f"cpp-{isa}"))
    else:
        out.append(pytest.param(("cpp", None), id="cpp", marks=pytest.mark.skip(reason=cpp.load_error())))
    return out


@pytest.fixture(params=backend_params())
def backend(request):
    name, isa = request.param
    if name == "cpp":
        cpp.force_isa(isa)
    yield name
    if name == "cpp":
        cpp.force_isa(None)


@pytest.fixture(params=[1, 2], ids=["t1", "t2"])
def threads(request):
    old = dispatch.get_threads()
    dispatch.set_threads(request.param)
    yield request.param
    dispatch.set_threads(old)


# On a bf16-dot ISA (avx512bf16) the C++ bf16 kernels round the activations to bf16 (nearest
# even) and then accumulate exact bf16 x bf16 products in fp32. Their exact reference is the
# fp32 reference on bf16-rounded activations; against the plain fp32 reference they differ by at
# most 2^-8 |x| per input (half a bf16 ulp), i.e. <= 2^-8 * (|x| @ |W|^T).
BF16_ACT_REL = 2.0 ** -8


def bf16_activations(backend_name: str, fmt: str) -> bool:
    return backend_name == "cpp" and fmt == "bf16" and cpp.available() and cpp.isa() == "avx512bf16"


def round_bf16(x):
    return x.bfloat16().float()


def int8_activations(backend_name: str, fmt: str) -> bool:
    """The AVX-512 C++ int8 kernels quantize activations to int8 per 64-group (VNNI)."""
    return backend_name == "cpp" and fmt == "int8" and cpp.available() and cpp.int8_activations()


def exact_ref(backend_name: str, x, w):
    """What a kernel computes: the int4 (or VNNI int8) integer-activation path, else fp32."""
    from hetero_qwen.kernels import reference
    from hetero_qwen.kernels.quant import int4_linear_exact, int8_linear_exact
    if w.fmt == "int4":
        return int4_linear_exact(x, w)
    if int8_activations(backend_name, w.fmt):
        return int8_linear_exact(x, w)
    return reference.linear(x, w)


def exact_ffn_ref(backend_name: str, x, gate, up, down):
    """The FFN a kernel computes (fp32 activations): each projection through exact_ref."""
    import torch
    h = torch.nn.functional.silu(exact_ref(backend_name, x, gate)) * exact_ref(backend_name, x, up)
    return exact_ref(backend_name, h, down)
