"""Quantization formats: exact byte sizes, round trips, error bounds, layout."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hetero_qwen.formats import INT4_GROUP, matrix_bytes
from hetero_qwen.kernels.quant import (PackedWeight, dequantize_int4, int4_error_bound,
                                       quantize_activations_int4, quantize_int4, quantize_int8,
                                       unpack_int4)


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 40), cols=st.integers(1, 300), fmt=st.sampled_from(["bf16", "int8", "int4"]),
       scale=st.floats(1e-3, 1e3), seed=st.integers(0, 2**16))
def test_bytes_and_error_bounds(rows, cols, fmt, scale, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * scale + torch.randn(rows, 1, generator=g) * scale
    pw = PackedWeight.from_float(w, fmt)
    assert pw.nbytes == matrix_bytes(rows, cols, fmt) == pw.expected_nbytes()
    err = (pw.dequantize() - w).abs()
    if fmt == "bf16":
        assert (err <= w.abs() * 2 ** -8).all()
    elif fmt == "int8":
        bound = w.abs().amax(1, keepdim=True) / 254 * (1 + 1e-5)
        assert (err <= bound).all()
    else:
        assert (err <= int4_error_bound(w)).all()


def test_int8_zero_row_and_range():
    w = torch.zeros(3, 10)
    w[1] = torch.linspace(-2, 2, 10)
    q, s = quantize_int8(w)
    assert s[0] == 0 and (q[0] == 0).all()
    assert q.abs().max() <= 127 and q[1].max() == 127 and q[1].min() == -127


def test_int4_layout_split_halves():
    n = INT4_GROUP + 5
    w = torch.arange(n, dtype=torch.float32)[None].repeat(2, 1)
    packed, meta = quantize_int4(w)
    assert packed.shape == (2, 2 * INT4_GROUP // 2) and meta.shape == (2, 2, 2) and meta.dtype == torch.float16
    q = unpack_int4(packed, n)
    # byte j of group 0: low nibble = input j, high nibble = input j + G/2
    j = 3
    assert packed[0, j] & 15 == q[0, j] and packed[0, j] >> 4 == q[0, j + INT4_GROUP // 2]
    assert torch.allclose(dequantize_int4(packed, meta, n), w, atol=2.2)
    # padding nibbles of the last group are zero
    tail = unpack_int4(packed, 2 * INT4_GROUP)[:, n:]
    assert (tail == 0).all()


def test_int4_constant_group_is_exact():
    w = torch.full((2, 70), 0.375)
    pw = PackedWeight.from_float(w, "int4")
    assert torch.equal(pw.dequantize(), w)


def test_activation_quantization_bound():
    torch.manual_seed(0)
    x = torch.randn(3, 150) * torch.logspace(-2, 2, 150)
    xq, xs, xsum = quantize_activations_int4(x)
    G = INT4_GROUP
    xp = torch.nn.functional.pad(x, (0, xq.shape[1] - 150))
    deq = xq.float() * xs.repeat_interleave(G, 1)
    assert ((deq - xp).abs() <= xs.repeat_interleave(G, 1) / 2 * (1 + 1e-5) + 1e-30).all()
    # group sums agree up to fp32 rounding of a 64-term sum (relative to the sum of magnitudes)
    groups = deq.view(3, -1, G).double()
    assert ((xsum.double() - groups.sum(-1)).abs() <= 1e-6 * groups.abs().sum(-1) + 1e-12).all()
