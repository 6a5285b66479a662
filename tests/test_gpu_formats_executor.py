"""GPU weight formats (int8, int4, fp8) on the simulated GPU: every policy equals the dequantized
reference (transformers with each GPU-resident matrix replaced by what its format stores), fp32 within
1e-4 of the logit scale, within the plan's predicted peaks; the plan decides each group's format."""

import pytest
import torch

import hetero_qwen
from executor_cases import IDS, profile
from gpu_format_reference import dequantized_reference
from helpers import check_matches_and_fits, rel_err
from hf_models import hf_logits

FORMATS = ("int8", "int4", "fp8")
POLICIES = {
    "layers-all": dict(policy="layers", vram="64MB"),
    "layers-split": dict(policy="layers", vram="500KB"),
    "auto": dict(policy="auto", vram="500KB", bandwidth={"cpu": "1GB/s", "gpu": "100GB/s", "pcie": "10GB/s"}),
    "ffn-cpu-streamed": dict(policy="ffn-cpu", prefill={"chunk": 64, "stream": "on"}),
}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("label", list(POLICIES))
def test_gpu_format_equals_dequantized_reference(fmt, label, hf_causal):
    hf, path = hf_causal
    kw = dict(POLICIES[label])
    prof = profile(kw.pop("policy"), kw.pop("vram", "64MB"), weights={"gpu_dtype": fmt}, **kw)
    eng = hetero_qwen.load(path, profile=prof, quiet=True)
    on_gpu = [g for g in eng.plan.groups if g.home == "gpu"]
    assert on_gpu and all(g.dtype == ("fp32" if g.kind == "embed" else "int8" if g.kind == "head" else fmt) for g in on_gpu)
    expected = hf_logits(dequantized_reference(hf, eng), IDS)
    check_matches_and_fits(eng, IDS, expected, 100, 105)


def test_override_dtype_pins_a_group_format(hf_causal):
    """`overrides: [{match, dtype}]`: the head in bf16 and layer 1's FFN in int8 while the rest is int4."""
    hf, path = hf_causal
    prof = profile("layers", "64MB", weights={"gpu_dtype": "int4"},
                   overrides=[{"match": "lm_head", "dtype": "bf16"}, {"match": r"layers\.1\.mlp", "dtype": "int8"}])
    eng = hetero_qwen.load(path, profile=prof, quiet=True)
    assert eng.plan.group("lm_head").dtype == "fp32"  # bf16 is the float format: fp32 compute here
    assert eng.plan.group("model.layers.1.mlp").dtype == "int8"
    assert eng.plan.group("model.layers.0.mlp").dtype == "int4"
    assert rel_err(eng.logits(IDS), hf_logits(dequantized_reference(hf, eng), IDS)) < 1e-4


def test_deltanet_gate_inputs_stay_float_inside_an_int4_group(hf_causal):
    _, path = hf_causal
    eng = hetero_qwen.load(path, profile=profile("layers", "64MB", weights={"gpu_dtype": "int4"}), quiet=True)
    layer = next(L for L in eng.runner.layers if L.kind != "full_attention")
    op = layer.mixer.ops["gpu"]
    assert isinstance(op.in_proj_a.weight, torch.Tensor) and isinstance(op.in_proj_b.weight, torch.Tensor)
    assert type(op.in_proj_qkv).__name__ == "Int4Linear"
