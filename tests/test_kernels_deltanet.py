"""Fused DeltaNet decode step: equals the torch reference, stays close to fp64 over 600 steps."""

import pytest
import torch

from hetero_qwen.kernels import cpp, reference
from hetero_qwen.kernels import numba_kernels as nk

from kernels_common import backend, threads  # noqa: F401


def make(B, Hk, Hv, Dk, Dv, K=4, L=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    cd = 2 * Hk * Dk + Hv * Dv
    return dict(mixed_qkv=torch.randn(B, cd, generator=g), a=torch.randn(B, Hv, generator=g),
                b=torch.randn(B, Hv, generator=g), conv_weight=torch.randn(cd, K, generator=g) * 0.5,
                conv_state=torch.randn(B, cd, L, generator=g), A_log=torch.randn(Hv, generator=g) * 0.5,
                dt_bias=torch.randn(Hv, generator=g), state=torch.randn(B, Hv, Dk, Dv, generator=g) * 0.1)


def step(be, **kw):
    f = cpp.deltanet_decode_step if be == "cpp" else nk.deltanet_decode_step
    return f(**kw)


@pytest.mark.parametrize("shape", [(1, 2, 6, 16, 24, 4, 3), (2, 1, 3, 19, 37, 4, 4), (3, 2, 4, 33, 70, 3, 2),
                                   (1, 2, 6, 128, 128, 4, 3)])
def test_step_matches_reference(backend, threads, shape):
    B, Hk, Hv, Dk, Dv, K, L = shape
    ref = make(B, Hk, Hv, Dk, Dv, K, L)
    fast = {k: v.clone() for k, v in ref.items()}
    o_ref = reference.deltanet_decode_step(**ref)
    o = step(backend, **fast)
    assert torch.allclose(o, o_ref, rtol=1e-4, atol=1e-5)
    assert torch.equal(fast["conv_state"], ref["conv_state"])
    assert torch.allclose(fast["state"], ref["state"], rtol=1e-4, atol=1e-6)


def test_reference_matches_transformers_functions():
    tr = pytest.importorskip("transformers.models.qwen3_5.modeling_qwen3_5")
    kw = make(2, 2, 6, 16, 24)
    hf = {k: v.clone() for k, v in kw.items()}
    o = reference.deltanet_decode_step(**kw)
    Hk, Hv, Dk, Dv = 2, 6, 16, 24
    x = tr.torch_causal_conv1d_update if hasattr(tr, "torch_causal_conv1d_update") else tr.causal_conv1d_update
    qkv = x(hf["mixed_qkv"][:, :, None], hf["conv_state"], hf["conv_weight"], None, "silu")[:, :, 0]
    q, k, v = torch.split(qkv, [Hk * Dk, Hk * Dk, Hv * Dv], -1)
    beta = hf["b"].sigmoid()
    g = -hf["A_log"].exp() * torch.nn.functional.softplus(hf["a"] + hf["dt_bias"])
    out, st = tr.torch_recurrent_gated_delta_rule(
        q.reshape(2, 1, Hk, Dk), k.reshape(2, 1, Hk, Dk), v.reshape(2, 1, Hv, Dv), g=g[:, None], beta=beta[:, None],
        initial_state=hf["state"], output_final_state=True, use_qk_l2norm_in_kernel=True)
    assert torch.allclose(o, out[:, 0], rtol=1e-5, atol=1e-6)
    assert torch.allclose(kw["state"], st, rtol=1e-5, atol=1e-6)
    assert torch.equal(kw["conv_state"], hf["conv_state"])


def test_long_run_against_fp64(backend):
    """600 decode steps: fast fp32 kernel vs the reference run in fp64."""
    B, Hk, Hv, Dk, Dv = 1, 2, 6, 32, 24
    kw = make(B, Hk, Hv, Dk, Dv, seed=3)
    ref = {k: v.double() for k, v in kw.items()}
    g = torch.Generator().manual_seed(11)
    worst = 0.0
    for t in range(600):
        x = torch.randn(B, kw["mixed_qkv"].shape[1], generator=g)
        a, b = torch.randn(B, Hv, generator=g), torch.randn(B, Hv, generator=g)
        kw.update(mixed_qkv=x, a=a, b=b)
        ref.update(mixed_qkv=x.double(), a=a.double(), b=b.double())
        o = step(backend, **kw)
        o64 = reference.deltanet_decode_step(**ref)
        worst = max(worst, ((o.double() - o64).norm() / o64.norm()).item())
    assert worst < 1e-4, worst
    assert ((kw["state"].double() - ref["state"]).norm() / ref["state"].norm()).item() < 1e-4
