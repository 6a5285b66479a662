"""GPU weight formats (kernels/gpu_linear.py) against their plain references, on the CPU kernels
(torch's *_for_cpu tinygemm, _weight_int8pack_mm) that the simulated GPU runs."""

import pytest
import torch

from helpers import rel_err
from hetero_qwen.kernels import gpu_linear as gl
from hetero_qwen.kernels.gpu_linear import Fp8BlockLinear, Int4Linear, Int8Linear

SHAPES = [(45, 100), (16, 128), (300, 260), (33, 513)]




def ops(w):
    yield "int4-g32", Int4Linear.from_float(w, 32)
    yield "int4-g64", Int4Linear.from_float(w, 64)
    yield "int4-g128-plain", Int4Linear.from_float(w, 128, prefill_plain=True, crossover=2)
    yield "int4-g256", Int4Linear.from_float(w, 256)
    yield "int8", Int8Linear.from_float(w)
    yield "fp8", Fp8BlockLinear.from_float(w)


@pytest.mark.parametrize("shape", SHAPES)
def test_every_format_equals_its_reference_at_odd_shapes_and_batches(shape):
    torch.manual_seed(shape[0])
    w = torch.randn(shape) * 0.05
    for name, op in ops(w):
        for b in range(1, 6):
            x = torch.randn(b, shape[1])
            assert rel_err(op(x), op.reference(x)) < 1e-5, (name, b)
        x3 = torch.randn(2, 3, shape[1])  # leading dims kept
        assert op(x3).shape == (2, 3, shape[0])
        xb = x3.to(torch.bfloat16)  # the GPU compute dtype: bf16 rounding of the output only
        y = op(xb)
        assert y.dtype == torch.bfloat16 and rel_err(y, op.reference(xb)) < 2e-2, name


@pytest.mark.parametrize("group", gl.INT4_GPU_GROUPS)
def test_int4_round_to_nearest_stays_within_half_a_step(group):
    torch.manual_seed(group)
    w = torch.randn(32, 300)
    op = Int4Linear.from_float(w, group)
    ng = -(-300 // group)
    mn = torch.nn.functional.pad(w, (0, ng * group - 300), value=float("inf")).view(32, ng, group).amin(2)
    mx = torch.nn.functional.pad(w, (0, ng * group - 300), value=float("-inf")).view(32, ng, group).amax(2)
    step = (mx - mn) / 15
    # half a step, plus bf16 rounding of scale (x 15) and of zero (|min| + 8 * step)
    b = step / 2 + 2.0 ** -8 * (15 * step + mn.abs() + 8 * step)
    assert bool(((op.reference_weight() - w).abs() <= b.repeat_interleave(group, 1)[:, :300]).all())
    # bytes: 4 bits per weight + bf16 scale and zero per group (padded to whole 16-row, 128-input tiles)
    assert op.nbytes == op.n_pad * op.k_pad // 2 + op.k_pad // group * op.n_pad * 4


def test_int4_prefill_tiles_equal_the_kernel():
    torch.manual_seed(3)
    w = torch.randn(70, 256)
    a = Int4Linear.from_float(w, 64)
    b = Int4Linear.from_float(w, 64, prefill_plain=True, crossover=4)
    x = torch.randn(9, 256)  # above b's crossover: dequantized row tiles + matmul
    assert rel_err(a(x), b(x)) < 1e-5
    assert b.nbytes > a.nbytes  # the plain copy costs bytes, hence opt-in


def test_int4_input_permutation_is_applied():
    torch.manual_seed(4)
    perm = torch.randperm(128)
    q = torch.randint(0, 16, (16, 128), dtype=torch.uint8)
    s = torch.rand(16, 2) * 0.1
    z = torch.randint(0, 16, (16, 2)).float()
    op = Int4Linear.from_int4_groups(q, s, z, 64, perm=perm)
    x = torch.randn(3, 128)
    wq = (q.float() - 8) * s.bfloat16().float().repeat_interleave(64, 1) + \
        ((8 - z) * s).bfloat16().float().repeat_interleave(64, 1)  # rows in permuted input order
    assert rel_err(op(x), x[:, perm] @ wq.t()) < 1e-5
    assert rel_err(op.reference(x), x[:, perm] @ wq.t()) < 1e-5


def test_without_the_int4_kernel_it_dequantizes_and_says_so_once(monkeypatch, capsys):
    torch.manual_seed(5)
    w = torch.randn(40, 200)
    with_kernel = Int4Linear.from_float(w, 128)

    def no_kernel(*a, **k):
        raise RuntimeError("_convert_weight_to_int4pack: not compiled for this GPU")
    monkeypatch.setattr(gl, "_convert_int4", no_kernel)
    monkeypatch.delitem(gl._int4_ok, "cpu", raising=False)
    monkeypatch.setattr(gl, "_said", set())
    ops = [Int4Linear.from_float(w, 128) for _ in range(2)]
    assert all(not op.use_kernel and op.packed is None and op.plain is not None for op in ops)
    for b in (1, 5):
        x = torch.randn(b, 200)
        assert rel_err(ops[0](x), with_kernel(x)) < 1e-5
    err = capsys.readouterr().err
    assert err.count("no tinygemm kernel") == 1 and "not compiled" in err


def test_unknown_group_and_format_are_refused():
    with pytest.raises(ValueError, match="group"):
        Int4Linear.from_float(torch.randn(16, 128), 48)
    with pytest.raises(ValueError, match="int4, int8 or fp8"):
        gl.gpu_linear_from_float(torch.randn(16, 128), "int3")


def test_fp8_from_checkpoint_tensors_matches_the_loader_dequantization():
    from hetero_qwen.checkpoint import dequantize_fp8
    torch.manual_seed(6)
    w = torch.randn(200, 300) * 0.02
    src = Fp8BlockLinear.from_float(w)
    op = Fp8BlockLinear.from_fp8(src.w8, src.scale_inv)
    assert torch.equal(op.reference_weight().bfloat16(), dequantize_fp8(src.w8, src.scale_inv))
    assert rel_err(op.reference_weight(), w) < 0.07
