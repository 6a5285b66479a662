"""GPTQ / AWQ / compressed-tensors int4 directories loaded as they are, into our GPU and CPU int4
layouts: the source's integers kept where the groups allow (GPU: tinygemm grouping up to bf16 scales;
CPU: our 64-input groups up to the fp16 offset), and no disk tier (their packing is not ours)."""

import pytest
import torch

import hetero_qwen
import quant_fixtures as qf
from helpers import rel_err
from hf_models import hf_logits, make_hf_model
from hetero_qwen.checkpoint import Checkpoint
from hetero_qwen.config import load_config
from hetero_qwen.errors import PlanError
from hetero_qwen.executor.devices import make_devices
from hetero_qwen.executor.weights import WeightPlacer
from hetero_qwen.kernels.quant import PackedWeight

IDS = [(11 * i + 5) % 300 + 1 for i in range(48)]
GPU = {"gpu": {"vram": "64MB", "reserve": "0MiB"}, "cpu": {"ram": "1GiB", "threads": 2, "reserve": "0MiB"},
       "context": 256, "policy": "layers", "weights": {"gpu_dtype": "int4"},
       "overrides": [{"match": "lm_head", "dtype": "bf16"}]}  # the checkpoint's float head, kept float
VARIANTS = {
    "gptq-g128-sym-desc_act": (qf.write_gptq, dict(group=128, sym=True, desc_act=True)),
    "gptq_v2-g32-asym-desc_act": (qf.write_gptq, dict(group=32, sym=False, desc_act=True, packing="gptq_v2")),
    "awq-g64": (qf.write_awq, dict(group=64)),
    "ct-g32-asym": (qf.write_compressed, dict(group=32, sym=False)),
}


@pytest.fixture(scope="module")
def fixtures(hf_causal, tmp_path_factory):
    _, src = hf_causal
    root = tmp_path_factory.mktemp("quant-placed")
    return {name: (root / name, fn(src, root / name, **kw)) for name, (fn, kw) in VARIANTS.items()}


def reference(known):
    hf = make_hf_model("causal", seed=0)  # the weights the fixtures were quantized from
    hf.load_state_dict({**hf.state_dict(), **known})
    return hf_logits(hf, IDS)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_gpu_int4_keeps_the_checkpoint_integers(fixtures, name):
    """On the (simulated) GPU in int4: logits within the bf16 rounding of the scales of an fp32 run of
    the exact dequantized weights. Re-quantizing them (RTN in new groups) would be ~8% off."""
    path, known = fixtures[name]
    eng = hetero_qwen.load(path, profile=GPU, dtype="fp32", quiet=True)
    assert all(g.home == "gpu" for g in eng.plan.groups if g.kind != "embed")
    ops = [v for L in eng.runner.layers for slot in (L.mixer, L.ffn) for v in vars(slot.ops["gpu"]).values()
           if type(v).__name__ == "Int4Linear"]
    assert ops and type(eng.runner.layers[0].ffn.ops["gpu"].gate).__name__ == "Int4Linear"
    # act-order: the inputs are gathered into group order (where the tiny shapes have several groups)
    assert any(op.perm is not None for op in ops) == ("desc_act" in name)
    assert rel_err(eng.logits(IDS), reference(known)) < 5e-3


@pytest.mark.parametrize("name", list(VARIANTS))
def test_cpu_int4_takes_the_source_integers_where_our_layout_can(fixtures, name):
    """cpu_dtype int4: every weight without act-order becomes our int4 from its own integers
    (groups of 64/128/256: only the fp16 offset rounds; group 32: re-quantized within the int4 bound,
    quant_formats.repack, in input order); an act-order weight whose groups would fit (its inputs
    permuted, which our layout cannot store) stays the exact dequantized float, packed as any float."""
    from hetero_qwen.quant_formats import to_cpu_int4
    path, known = fixtures[name]
    cfg = load_config(path)
    ckpt = Checkpoint(path, cfg)
    placer = WeightPlacer(ckpt, make_devices(None, 2**30, False), torch.float32, None)

    class P:  # the placement fields _source reads
        home, dtype = "cpu", "int4"
    kinds = set()
    for g in cfg.weight_groups():
        for local, shape in g.matrices:
            full = placer.name(g, local)
            if full not in known:
                continue
            w, rp = placer._source(g, local, shape, P, "int4"), to_cpu_int4(ckpt.quant.int_groups(full))
            if rp.perm is None:
                assert isinstance(w, PackedWeight) and bool(((w.dequantize() - known[full]).abs() <= rp.bound).all())
                kinds.add("exact" if rp.exact else "requantized")
            else:
                assert isinstance(w, torch.Tensor) and torch.equal(w, known[full])
                kinds.add("act-order")
    want = {"gptq-g128-sym-desc_act": {"exact", "act-order"}, "gptq_v2-g32-asym-desc_act": {"requantized"},
            "awq-g64": {"exact"}, "ct-g32-asym": {"requantized"}}[name]
    assert kinds == want


def test_no_disk_tier_for_a_community_int4_checkpoint(fixtures):
    path, _ = fixtures["awq-g64"]
    eng = hetero_qwen.load(path, profile={"cpu": {"ram": "1GiB", "threads": 2, "reserve": "0MiB"}}, dtype="fp32",
                           quiet=True)
    assert eng.plan.disk_dtype == "int4" and eng.plan.tiers["disk"].budget_bytes == 0
    assert all(g.home != "disk" for g in eng.plan.groups)
    with pytest.raises(PlanError, match="quantize --format int4"):
        hetero_qwen.load(path, profile={"cpu": {"ram": "400KB", "threads": 2, "reserve": "0MiB"}}, quiet=True)


def test_a_quantized_checkpoint_without_its_vision_tower_loads_text_only(hf_cond, tmp_path, capsys):
    """Quantizers often drop the vision tower (and the MTP layer, tests/test_mtp.py): the model still
    loads, and one line says images are off."""
    from safetensors.torch import load_file, save_file
    _, src = hf_cond
    dst = tmp_path / "cond-gptq"
    qf.write_gptq(src, dst, group=32, sym=True)
    tensors = load_file(str(dst / "model.safetensors"))
    save_file({k: v for k, v in tensors.items() if ".visual." not in k and not k.startswith("visual.")},
              str(dst / "model.safetensors"), metadata={"format": "pt"})
    capsys.readouterr()
    eng = hetero_qwen.load(dst, profile={"cpu": {"ram": "2GiB", "threads": 2}}, dtype="fp32")
    err = [ln for ln in capsys.readouterr().err.splitlines() if "images" in ln]
    assert eng.vision is None and len(err) == 1 and err[0].startswith("images are off: this checkpoint's vision tower")
    assert eng.logits(IDS[:8]).shape[0] == 8
