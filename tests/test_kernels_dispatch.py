"""Dispatcher: static table, forcing, kernel_info, missing-build fallback."""

import pytest
import torch

from hetero_qwen.kernels import CpuFFN, CpuLinear, cpp, dispatch, kernel_info, reference


@pytest.fixture(autouse=True)
def _reset(monkeypatch):
    monkeypatch.delenv("HETERO_QWEN_KERNELS", raising=False)
    yield
    dispatch.force_backend(None)
    cpp.reload()


def test_table():
    best = "cpp" if cpp.available() else "numba"
    assert dispatch.choose("ffn", "int8", 1) == best
    assert dispatch.choose("linear", "int4", 8) == best
    assert dispatch.choose("linear", "bf16", 64) == "torch"
    assert dispatch.choose("deltanet", None, 1) == best


@pytest.mark.parametrize("name", ["numba", "torch", "reference"] + (["cpp"] if cpp.available() else []))
def test_force_function_and_env(name, monkeypatch):
    dispatch.force_backend(name)
    assert dispatch.choose("linear", "int8", 1) == name
    dispatch.force_backend(None)
    monkeypatch.setenv("HETERO_QWEN_KERNELS", name)
    assert dispatch.choose("ffn", "bf16", 100) == name
    assert kernel_info()["backend"] == name and kernel_info()["forced"]


def test_bad_backend_name(monkeypatch):
    with pytest.raises(ValueError, match="expected one of"):
        dispatch.force_backend("cuda")
    monkeypatch.setenv("HETERO_QWEN_KERNELS", "fast")
    with pytest.raises(ValueError, match="HETERO_QWEN_KERNELS"):
        dispatch.choose("linear", "int8", 1)


@pytest.mark.parametrize("name", ["numba", "torch", "reference"] + (["cpp"] if cpp.available() else []))
@pytest.mark.parametrize("fmt", ["bf16", "int8", "int4"])
def test_every_backend_runs_cpu_ops(name, fmt):
    g = torch.Generator().manual_seed(0)
    gw, uw, dw = torch.randn(48, 40, generator=g), torch.randn(48, 40, generator=g), torch.randn(40, 48, generator=g)
    ffn = CpuFFN(gw * 0.1, uw * 0.1, dw * 0.1, fmt)
    lin = CpuLinear(gw, fmt)
    x = torch.randn(3, 40, generator=g)
    ref_f = reference.ffn_decode(x, ffn.gate, ffn.up, ffn.down)
    ref_l = reference.linear(x, lin.weight)
    dispatch.force_backend(name)
    tol = 0.05 if (fmt == "int4" or name == "torch") else 1e-4  # int4 act-quant; torch runs bf16 GEMMs
    if name == "cpp" and fmt == "bf16" and cpp.isa() == "avx512bf16":
        tol = 0.01  # bf16-rounded activations (see tests/kernels_common.py; bounded in test_kernels_linear)
    assert torch.allclose(ffn(x), ref_f, rtol=tol, atol=tol * ref_f.abs().max().item())
    assert torch.allclose(lin(x), ref_l, rtol=tol, atol=tol * ref_l.abs().max().item())
    assert ffn.nbytes == ffn.gate.nbytes * 2 + ffn.down.nbytes


def test_missing_build_falls_back_with_clear_message(tmp_path):
    assert not cpp.reload(str(tmp_path))  # a directory without the library
    msg = cpp.load_error()
    assert "not built" in msg and "pip install" in msg and "\n" not in msg
    assert dispatch.choose("ffn", "int8", 1) == "numba"
    info = kernel_info()
    assert info["backend"] == "numba" and info["cpp_error"] == msg
    with pytest.raises(RuntimeError, match="not built"):
        cpp.linear(torch.randn(1, 4), CpuLinear(torch.randn(2, 4), "int8").weight)
    dispatch.force_backend("cpp")
    with pytest.raises(RuntimeError, match="not built"):
        dispatch.choose("linear", "int8", 1)
    dispatch.force_backend(None)
    y = CpuLinear(torch.randn(5, 7), "int8")(torch.randn(2, 7))  # still works, via Numba
    assert y.shape == (2, 5)


def test_env_disable(monkeypatch):
    monkeypatch.setenv("HETERO_QWEN_NO_CPP", "1")
    assert not cpp.reload()
    assert "HETERO_QWEN_NO_CPP" in cpp.load_error()


def test_kernel_info_fields():
    info = kernel_info()
    for k in ("backend", "cpp_isa", "cpu_isa", "threads", "cpu", "int8_activations"):
        assert k in info
    if cpp.available():  # the ISA copy in use says whether int8 weights get int8 activations
        cpp.force_isa("avx2" if cpp.isa_supported("avx2") else "scalar")
        assert kernel_info()["int8_activations"] == "fp32"
        cpp.force_isa(None)
    assert dispatch.set_threads(1) == 1 and kernel_info()["threads"] == 1
    dispatch.set_threads(2)
