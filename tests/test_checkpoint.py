"""Loader: both name layouts, FP8 dequantization, lazy mapping, and clear errors on bad input."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import hetero_qwen
from helpers import run_cli
from hf_models import make_hf_model, save_hf_model
from hetero_qwen.checkpoint import Checkpoint, canonical_name
from hetero_qwen.config import load_config
from hetero_qwen.errors import CheckpointError, ConfigError

NOT_FP8 = ("norm", "A_log", "conv1d", "dt_bias", "in_proj_a", "in_proj_b", "embed_tokens", "lm_head", "visual")


def test_canonical_names_cover_both_layouts():
    assert canonical_name("model.layers.3.mlp.up_proj.weight", "model.language_model.") == \
        "model.language_model.layers.3.mlp.up_proj.weight"
    assert canonical_name("model.language_model.norm.weight", "model.") == "model.norm.weight"
    assert canonical_name("model.visual.blocks.0.attn.qkv.weight", "model.") == "model.visual.blocks.0.attn.qkv.weight"
    assert canonical_name("mtp.fc.weight", "model.") == "mtp.fc.weight"


def test_visual_and_mtp_tensors_stay_addressable(hf_cond, tmp_path):
    _, src = hf_cond
    d = tmp_path / "ckpt"
    shutil.copytree(src, d)
    save_file({"mtp.fc.weight": torch.ones(4, 8), "mtp.norm.weight": torch.zeros(4)}, str(d / "mtp.safetensors"))
    index = json.loads((d / "model.safetensors.index.json").read_text())
    index["weight_map"].update({"mtp.fc.weight": "mtp.safetensors", "mtp.norm.weight": "mtp.safetensors"})
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    ck = Checkpoint(d, load_config(d))
    assert ck.raw("mtp.fc.weight").shape == (4, 8)
    assert any(n.startswith("model.visual.") for n in ck.names())
    hetero_qwen.load(d)  # extra tensors never break loading


def _fp8_quantize(w: torch.Tensor, block: int = 128):
    R, C = w.shape
    nr, nc = -(-R // block), -(-C // block)
    q = torch.empty(R, C, dtype=torch.float8_e4m3fn)
    scale = torch.empty(nr, nc)
    for i in range(nr):
        for j in range(nc):
            blk = w[i * block:(i + 1) * block, j * block:(j + 1) * block].float()
            s = blk.abs().max().clamp(min=1e-12) / 448.0
            scale[i, j] = s
            q[i * block:(i + 1) * block, j * block:(j + 1) * block] = (blk / s).to(torch.float8_e4m3fn)
    return q, scale


def test_fp8_checkpoint_equals_dequantized_twin(tmp_path):
    hf = make_hf_model("cond", seed=2, hidden_size=160, intermediate_size=288)  # blocks cut across rows/cols
    src = save_hf_model(hf.to(torch.bfloat16), tmp_path / "src", shard="10MB")
    fp8_dir, twin_dir = tmp_path / "fp8", tmp_path / "twin"
    fp8_dir.mkdir(), twin_dir.mkdir()
    tensors = {}
    for f in src.glob("*.safetensors"):
        tensors.update(load_file(str(f)))
    fp8, twin = {}, {}
    for name, t in tensors.items():
        if t.ndim == 2 and not any(k in name for k in NOT_FP8):
            q, s = _fp8_quantize(t)
            fp8[name], fp8[name + "_scale_inv"] = q, s
            twin[name] = (q.float() * s.repeat_interleave(128, 0)[:t.shape[0]].repeat_interleave(128, 1)[:, :t.shape[1]]).bfloat16()
        else:
            fp8[name] = twin[name] = t
    assert any(v.dtype == torch.float8_e4m3fn for v in fp8.values())
    cfg = json.loads((src / "config.json").read_text())
    (twin_dir / "config.json").write_text(json.dumps(cfg))
    cfg["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                  "weight_block_size": [128, 128]}
    (fp8_dir / "config.json").write_text(json.dumps(cfg))
    save_file(fp8, str(fp8_dir / "model.safetensors"))
    save_file(twin, str(twin_dir / "model.safetensors"))
    ids = list(range(1, 60))
    a, b = hetero_qwen.load(fp8_dir).logits(ids), hetero_qwen.load(twin_dir).logits(ids)
    assert torch.equal(a, b)


def test_tensors_are_lazy_views_of_the_file(hf_causal):
    _, path = hf_causal
    ck = Checkpoint(path, load_config(path))
    t = ck.raw("model.embed_tokens.weight")
    assert t.untyped_storage().nbytes() == t.numel() * 4  # a window on the mapped shard, not a copy


# ---- bad checkpoints: one clear line, non-zero exit ----------------------------------------

@pytest.fixture
def broken(hf_causal, tmp_path):
    _, src = hf_causal
    d = tmp_path / "broken"
    shutil.copytree(src, d)
    return d


def _expect_cli_error(path, capsys, *needles):
    code, out, err = run_cli(["generate", "--model", path, "--prompt-ids", "1,2,3", "-n", "2"], capsys)
    assert code != 0
    lines = [ln for ln in err.strip().splitlines() if ln]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


def test_missing_shard(broken, capsys):
    shard = sorted(broken.glob("model-*.safetensors"))[1]
    shard.unlink()
    _expect_cli_error(broken, capsys, shard.name, "missing")


def test_truncated_shard(broken, capsys):
    shard = max(broken.glob("model-*.safetensors"), key=lambda p: p.stat().st_size)
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 100])
    _expect_cli_error(broken, capsys, "truncated")


def test_shape_mismatch(broken, capsys):
    cfg = json.loads((broken / "config.json").read_text())
    cfg["intermediate_size"] = 100
    (broken / "config.json").write_text(json.dumps(cfg))
    _expect_cli_error(broken, capsys, "shape", "mlp")


def test_unknown_architecture(broken, capsys):
    cfg = json.loads((broken / "config.json").read_text())
    cfg["model_type"], cfg["architectures"] = "llama", ["LlamaForCausalLM"]
    (broken / "config.json").write_text(json.dumps(cfg))
    _expect_cli_error(broken, capsys, "llama", "not a Qwen3.5")
    with pytest.raises(ConfigError):
        load_config(broken)


def test_token_id_out_of_range(hf_causal, capsys):
    _, path = hf_causal
    code, _, err = run_cli(["generate", "--model", path, "--prompt-ids", "1,2,99999", "-n", "2", "--json"], capsys)
    assert code != 0 and "out of range" in err and "Traceback" not in err


def test_prompt_longer_than_context(hf_causal):
    _, path = hf_causal
    eng = hetero_qwen.load(path, context=16)
    with pytest.raises(hetero_qwen.errors.InputError, match="context"):
        list(eng.generate(list(range(1, 20)), max_new_tokens=2))


def test_missing_tensor_named(broken):
    from safetensors.torch import load_file as lf
    shard = sorted(broken.glob("model-*.safetensors"))[0]
    tensors = lf(str(shard))
    victim = sorted(tensors)[0]
    del tensors[victim]
    save_file(tensors, str(shard))
    with pytest.raises(CheckpointError, match="missing"):
        hetero_qwen.load(broken)
