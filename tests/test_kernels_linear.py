"""GEMV / small-GEMM and FFN kernels equal their references for every backend, ISA, thread count."""

import pytest
import torch

from hetero_qwen.kernels import cpp, dispatch, reference
from hetero_qwen.kernels import numba_kernels as nk
from hetero_qwen.kernels.quant import PackedWeight, act_error_bound

from kernels_common import BF16_ACT_REL, backend, bf16_activations, exact_ffn_ref, exact_ref, int8_activations, round_bf16, threads  # noqa: F401

SHAPES = [(37, 203), (5, 64), (70, 300), (129, 17), (19, 1100)]  # not multiples of 8/16/32/64 (17: < one vector;
# 1100: 17 int4 groups, two 8-group steps of the AVX-512 int4 loop + one more + a partial group)
FMTS = ["bf16", "int8", "int4"]


def run_linear(be, x, w):
    return cpp.linear(x, w) if be == "cpp" else nk.linear(x, w)


def run_ffn(be, x, g, u, d):
    return cpp.ffn(x, g, u, d) if be == "cpp" else nk.ffn(x, g, u, d)


@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("B", [1, 2, 3, 4, 5, 11])  # 2..5: speculative verify forwards of k + 1 tokens
def test_linear_matches_reference(backend, threads, fmt, B):
    g = torch.Generator().manual_seed(B)
    for out, n in SHAPES:
        w = PackedWeight.from_float(torch.randn(out, n, generator=g), fmt)
        x = torch.randn(B, n, generator=g)
        y = run_linear(backend, x, w)
        bf = bf16_activations(backend, fmt)
        ref = exact_ref(backend, round_bf16(x) if bf else x, w)
        absdot = x.abs() @ w.dequantize().abs().t()
        tol = 1e-5 * absdot + 1e-5
        assert ((y - ref).abs() <= tol).all(), (fmt, out, n, (y - ref).abs().max())
        if bf:  # and within half a bf16 ulp per activation of the fp32 reference
            assert ((y - reference.linear(x, w)).abs() <= BF16_ACT_REL * absdot + tol).all()
        if fmt == "int4" or int8_activations(backend, fmt):  # and within the activation-
            plain = reference.linear(x, w)                     # quantization bound of fp32
            assert ((y - plain).abs() <= act_error_bound(x, w) + tol).all()


@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("B", [1, 2, 3, 4, 5, 8])
def test_ffn_matches_reference(backend, threads, fmt, B):
    gen = torch.Generator().manual_seed(100 + B)
    H, I = 67, 130
    gate, up = (PackedWeight.from_float(torch.randn(I, H, generator=gen) * 0.3, fmt) for _ in range(2))
    down = PackedWeight.from_float(torch.randn(H, I, generator=gen) * 0.3, fmt)
    x = torch.randn(B, H, generator=gen)
    if bf16_activations(backend, fmt):  # check the hidden, then the down projection of it
        hid = torch.empty(B, I)
        y = cpp.ffn(x, gate, up, down, hidden=hid)
        xb = round_bf16(x)
        h = torch.nn.functional.silu(reference.linear(xb, gate)) * reference.linear(xb, up)
        assert torch.allclose(hid, h, rtol=1e-4, atol=1e-4 * h.abs().max().item())
        ref = reference.linear(round_bf16(hid), down)
        assert torch.allclose(y, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
        return
    y = run_ffn(backend, x, gate, up, down)
    ref = exact_ffn_ref(backend, x, gate, up, down)
    assert torch.allclose(y, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


@pytest.mark.parametrize("fmt", FMTS)
def test_cpp_rows_of_a_batch_equal_batch_one(backend, threads, fmt):
    """Each token of a batch of 2..8 (a verify forward; the C++ fast path takes up to 8 tokens) gets
    bit for bit what it gets alone (a decode token): the C++ kernels apply each loaded weight block
    to all rows with per-row arithmetic that does not depend on the batch, and the rows per block at
    batch 1 and 2..8 differ."""
    if backend != "cpp":
        pytest.skip("batch invariance is a property of the C++ kernels")
    g = torch.Generator().manual_seed(11)
    for out, n in SHAPES + [(45, 600)]:  # 600: 9 int4 groups (a chunk of 8, one more) + a partial one
        w = PackedWeight.from_float(torch.randn(out, n, generator=g), fmt)
        x = torch.randn(8, n, generator=g)
        alone = torch.cat([cpp.linear(x[b:b + 1].contiguous(), w) for b in range(8)])
        for B in range(2, 9):
            assert torch.equal(cpp.linear(x[:B].contiguous(), w), alone[:B]), (fmt, out, n, B)


def test_int4_kernel_close_to_fp32_reference_on_realistic_weights():
    """Activation quantization adds < 1% relative error on a 27B-like row scale."""
    gen = torch.Generator().manual_seed(7)
    w = PackedWeight.from_float(torch.randn(256, 640, generator=gen) * 0.02, "int4")
    x = torch.randn(2, 640, generator=gen)
    y = dispatch.linear(x, w)
    ref = reference.linear(x, w)
    assert ((y - ref).norm() / ref.norm()).item() < 0.01


def test_bf16_activations_accepted():
    w = PackedWeight.from_float(torch.randn(20, 33), "bf16")
    x = torch.randn(2, 33).bfloat16()
    assert torch.allclose(dispatch.linear(x, w), reference.linear(x.float(), w), rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not cpp.available(), reason="C++ kernels not built")
def test_cpp_checks_inputs():
    w = PackedWeight.from_float(torch.randn(8, 16), "int8")
    with pytest.raises(ValueError, match=r"hq_linear: x: expected a contiguous tensor, got float32 \[2, 16\]"):
        cpp.linear(torch.randn(16, 2).t(), w)
    with pytest.raises(ValueError, match=r"hq_linear: x: expected float32 \[2, 16\] on the CPU, got float32 \[2, 15\]"):
        cpp.linear(torch.randn(2, 15), w)
    with pytest.raises(ValueError, match=r"hq_linear: y: expected float32 \[2, 8\] on the CPU, got float32 \[2, 9\]"):
        cpp.linear(torch.randn(2, 16), w, out=torch.empty(2, 9))
