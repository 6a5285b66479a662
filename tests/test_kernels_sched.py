"""Scheduling and prefetch knobs of the C++ kernels never change results (tests/kernels_common)."""

import pytest
import torch

from hetero_qwen.kernels import cpp, reference
from hetero_qwen.kernels.quant import PackedWeight

from kernels_common import backend, bf16_activations, exact_ffn_ref, exact_ref, round_bf16, threads  # noqa: F401

pytestmark = pytest.mark.skipif(not cpp.available(), reason="C++ kernels not built")

KNOBS = {  # name -> settings that reach each code path on small test shapes
    "default": {},
    "no-prefetch": {"prefetch_bytes": 0},
    "per-row-prefetch": {"prefetch_long_block": 0, "prefetch_bytes": 256},
    "far-prefetch": {"prefetch_bytes": 1 << 20},
    "l2-prefetch": {"prefetch_l2_row": 0, "prefetch_long_block": 0},
    "split-everything": {"min_split_bytes": 0, "prefetch_bytes": 64},
    "no-spin": {"spin_us": 0},
    "1-row-blocks": {"rows_per_block": 1},
    "2-row-blocks": {"rows_per_block": 2, "prefetch_long_block": 0},
    "8-row-blocks": {"rows_per_block": 8},
}


@pytest.fixture(params=list(KNOBS), ids=list(KNOBS))
def knobs(request):
    old = {k: cpp.tune(k) for k in cpp.TUNE_KEYS}
    for k, v in KNOBS[request.param].items():
        cpp.tune(k, v)
    yield request.param
    for k, v in old.items():
        cpp.tune(k, v)


def _ref(x, w):
    return exact_ref("cpp", x, w)


@pytest.mark.parametrize("fmt", ["bf16", "int8", "int4"])
@pytest.mark.parametrize("B", [1, 3])
def test_knobs_keep_results(backend, threads, knobs, fmt, B):
    if backend != "cpp":
        pytest.skip("C++ only")
    g = torch.Generator().manual_seed(3)
    for out, n in ((203, 333), (64, 2100), (9, 64)):
        w = PackedWeight.from_float(torch.randn(out, n, generator=g), fmt)
        x = torch.randn(B, n, generator=g)
        y = cpp.linear(x, w)
        ref = _ref(round_bf16(x) if bf16_activations(backend, fmt) else x, w)
        tol = 1e-5 * (x.abs() @ w.dequantize().abs().t()) + 1e-5
        assert ((y - ref).abs() <= tol).all(), (fmt, out, n)
    H, I = 131, 517
    gate, up = (PackedWeight.from_float(torch.randn(I, H, generator=g) * 0.3, fmt) for _ in range(2))
    down = PackedWeight.from_float(torch.randn(H, I, generator=g) * 0.3, fmt)
    x = torch.randn(B, H, generator=g)
    hid = torch.empty(B, I)
    y = cpp.ffn(x, gate, up, down, hidden=hid)
    if bf16_activations(backend, fmt):  # bf16-rounded activations: exact on the kernel's hidden
        ref = reference.linear(round_bf16(hid), down)
    else:
        ref = exact_ffn_ref(backend, x, gate, up, down)
    assert torch.allclose(y, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


def test_weight_validation_is_cached_but_follows_replaced_tensors():
    w = PackedWeight.from_float(torch.randn(16, 32), "int8")
    x = torch.randn(1, 32)  # 32 inputs: no full 64-group, fp32 activations on every ISA
    assert torch.allclose(cpp.linear(x, w), reference.linear(x, w), rtol=1e-5, atol=1e-5)
    w.data = torch.randn(16, 32).t().contiguous().t().to(torch.int8)  # new tensor, not contiguous
    with pytest.raises(ValueError, match="hq_linear: w: expected a contiguous tensor"):
        cpp.linear(x, w)
    w.data = w.data.contiguous()
    assert torch.allclose(cpp.linear(x, w), reference.linear(x, w), rtol=1e-5, atol=1e-5)


def test_tune_rejects_unknown_key():
    with pytest.raises(KeyError):
        cpp.tune("nope", 1)
