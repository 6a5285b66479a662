"""Shared fixtures for the kernel tests: every available backend x ISA x thread count."""

from __future__ import annotations

import pytest

from hetero_qwen.kernels import cpp, dispatch


def backend_params():
    out = [pytest.param(("numba", None), id="numba")]
    if cpp.available():
        for isa in ("scalar", "avx2", "avx512"):
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
