"""Community quantized checkpoints (GPTQ, AWQ, compressed-tensors, FP8) read as they are."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import hetero_qwen
import quant_fixtures as qf
from helpers import rel_err, run_cli
from hetero_qwen.checkpoint import Checkpoint
from hetero_qwen.config import load_config
from hetero_qwen.errors import HeteroQwenError
from hetero_qwen.kernels.quant import int4_error_bound, linear_dequant
from hetero_qwen.quant_formats import FormatInfo, QuantFormatError, detect_format, to_cpu_int4, to_gpu_int4
from hetero_qwen.quant_formats.awq import AWQ_ORDER, pack_awq, read_awq
from hetero_qwen.quant_formats.gptq import pack_gptq, read_gptq
from hf_models import hf_logits, make_hf_model

IDS = [(11 * i + 5) % 300 + 1 for i in range(48)]
# (writer, kwargs): the layouts people download (see ANCHORS.md), each at a group the tiny model has
VARIANTS = {
    "gptq-g128-sym-desc_act": (qf.write_gptq, dict(group=128, sym=True, desc_act=True)),
    "gptq-g32-sym": (qf.write_gptq, dict(group=32, sym=True)),
    "gptq-g32-asym-quantize_config": (qf.write_gptq, dict(group=32, sym=False, separate_config=True)),
    "gptq_v2-g32-asym-desc_act": (qf.write_gptq, dict(group=32, sym=False, desc_act=True, packing="gptq_v2")),
    "awq-g32": (qf.write_awq, dict(group=32)),
    "awq-g64": (qf.write_awq, dict(group=64)),
    "ct-g32-sym": (qf.write_compressed, dict(group=32, sym=True)),
    "ct-g32-asym": (qf.write_compressed, dict(group=32, sym=False)),
}


@pytest.fixture(scope="module")
def fixtures(hf_causal, tmp_path_factory):
    """name -> (dir, known exact dequantized weights), written once from the fp32 tiny model."""
    _, src = hf_causal
    root = tmp_path_factory.mktemp("quant")
    return {name: (root / name, fn(src, root / name, **kw)) for name, (fn, kw) in VARIANTS.items()}




# ------------------------------------------------------------------ packers vs published loops
def test_gptq_packer_matches_the_auto_gptq_packing_loop():
    """auto-gptq QuantLinear.pack: row r of qweight ORs input 8r + j shifted by 4j; zeros - 1
    packed the same way along outputs."""
    torch.manual_seed(0)
    w = qf.rtn_groups(torch.randn(16, 64), 32, sym=False, min_zero=1)
    t = pack_gptq(w, FormatInfo("gptq", 4, 32, False, packing="gptq"))
    intw = w.q.t().to(torch.int64)                      # [in, out]
    qweight = torch.zeros(8, 16, dtype=torch.int64)
    for r in range(8):
        for j in range(8):
            qweight[r] |= intw[8 * r + j] << (4 * j)
    zeros = (w.zero.t().to(torch.int64) - 1)            # [groups, out]
    qzeros = torch.zeros(2, 2, dtype=torch.int64)
    for c in range(2):
        for j in range(8):
            qzeros[:, c] |= zeros[:, 8 * c + j] << (4 * j)
    assert torch.equal(t["qweight"].to(torch.int64) & 0xFFFFFFFF, qweight)
    assert torch.equal(t["qzeros"].to(torch.int64) & 0xFFFFFFFF, qzeros)
    back = read_gptq(t, "m", FormatInfo("gptq", 4, 32, False, packing="gptq"))
    assert torch.equal(back.dequantize(), w.dequantize())


def test_awq_packer_matches_the_autoawq_gemm_loop():
    """AutoAWQ WQLinear_GEMM.from_linear: nibble i of word c holds output 8c + [0,2,4,6,1,3,5,7][i]."""
    torch.manual_seed(1)
    w = qf.rtn_groups(torch.randn(24, 64), 32, sym=False)
    t = pack_awq(w)
    intw = w.q.t().to(torch.int64)                      # [in, out]
    qweight = torch.zeros(64, 3, dtype=torch.int64)
    for c in range(3):
        for i in range(8):
            qweight[:, c] |= intw[:, 8 * c + AWQ_ORDER[i]] << (4 * i)
    assert torch.equal(t["qweight"].to(torch.int64) & 0xFFFFFFFF, qweight)
    back = read_awq(t, "m", FormatInfo("awq", 4, 32, False, packing="gemm"))
    assert torch.equal(back.dequantize(), w.dequantize())


def test_compressed_tensors_reader_equals_the_library_decompress():
    from compressed_tensors.compressors.pack_quantized import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from compressed_tensors.quantization.utils import calculate_qparams

    from hetero_qwen.quant_formats.compressed import read_compressed
    torch.manual_seed(2)
    for sym in (True, False):
        args = QuantizationArgs(num_bits=4, type="int", symmetric=sym, strategy="group", group_size=32)
        scheme = QuantizationScheme(targets=["Linear"], weights=args)
        w = torch.randn(20, 96)  # 20 outputs: the zero points pack across a partial last word
        g = w.view(20, 3, 32)
        scale, zp = calculate_qparams(g.amin(-1), g.amax(-1), args)
        state = {"weight": w, "weight_scale": scale.to(torch.bfloat16), **({} if sym else {"weight_zero_point": zp})}
        packed = PackedQuantizationCompressor.compress(state, scheme)
        lib = PackedQuantizationCompressor.decompress(dict(packed), scheme)["weight"]  # bf16
        ours = read_compressed(packed, "m", FormatInfo("compressed-tensors", 4, 32, sym)).dequantize()
        assert torch.equal(ours.to(torch.bfloat16), lib)


# --------------------------------------------------------------- checkpoints, loading, logits
@pytest.mark.parametrize("name", list(VARIANTS))
def test_dequantized_weights_equal_the_known_quantization(fixtures, name):
    path, known = fixtures[name]
    ckpt = Checkpoint(path, load_config(path))
    ckpt.check_complete()
    assert ckpt.format_info.name == name.split("-")[0].replace("gptq_v2", "gptq").replace("ct", "compressed-tensors")
    assert set(known) <= set(ckpt.quant.names())
    for n, w in known.items():
        assert torch.equal(ckpt.get(n), w), n
    assert ckpt.facts == {"has_mtp": False, "has_vision": False}


@pytest.mark.parametrize("name", ["gptq-g128-sym-desc_act", "gptq_v2-g32-asym-desc_act", "awq-g32", "ct-g32-asym"])
def test_logits_equal_an_fp32_run_of_the_dequantized_weights(fixtures, name):
    path, known = fixtures[name]
    hf = make_hf_model("causal", seed=0)  # the same weights the fixtures were quantized from
    hf.load_state_dict({**hf.state_dict(), **known})
    ref = hf_logits(hf, IDS)
    eng = hetero_qwen.load(path, profile={"cpu": {"ram": "2GiB", "threads": 2}}, dtype="fp32", quiet=True)
    assert rel_err(eng.logits(IDS), ref) < 1e-4


def test_generate_runs_on_a_gptq_directory(tiny_dir, tmp_path, capsys):
    """`hetero-qwen generate` on the GPTQ directory as it is, against the same run on a float
    checkpoint holding the dequantized weights."""
    dst, plain = tmp_path / "tiny-gptq", tmp_path / "tiny-dequantized"
    known = qf.write_gptq(tiny_dir, dst, group=128, sym=True, desc_act=True)
    qf._copy_dir(tiny_dir, plain)
    (plain / "config.json").write_text((tiny_dir / "config.json").read_text())
    save_file({**load_file(str(tiny_dir / "model.safetensors")), **known}, str(plain / "model.safetensors"))
    runs = []
    for d in (dst, plain):
        code, out, err = run_cli(["generate", "--model", d, "--prompt", "hello there", "-n", "8", "--json"], capsys)
        assert code == 0, err
        runs.append(json.loads(out)["ids"])
    assert runs[0] == runs[1] and len(runs[0]) >= 1
    code, out, _ = run_cli(["info", "--model", dst], capsys)
    assert code == 0 and "gptq int4 group 128 symmetric, desc_act" in out and "mtp: absent" in out


def test_info_names_every_format(fixtures, hf_cond, capsys):
    for name, want in [("awq-g32", "awq int4 group 32 asymmetric"),
                       ("ct-g32-sym", "compressed-tensors int4 group 32 symmetric")]:
        code, out, _ = run_cli(["info", "--json", "--model", fixtures[name][0]], capsys)
        assert code == 0 and json.loads(out)["checkpoint"]["format"].startswith(want)
    code, out, _ = run_cli(["info", "--json", "--model", hf_cond[1]], capsys)
    c = json.loads(out)["checkpoint"]
    assert c["format"] == "none (float weights)" and c["has_vision"] and not c["has_mtp"]


def test_fp8_checkpoint_is_detected_and_dequantized(hf_causal, tmp_path):
    from hetero_qwen.kernels.gpu_linear import Fp8BlockLinear
    from hetero_qwen.quant_formats.fp8 import dequantize_fp8_exact, read_fp8
    _, src = hf_causal
    sd = {}
    for f in src.glob("*.safetensors"):
        sd.update(load_file(str(f)))
    out = {}
    for n, t in sd.items():
        if qf.quantizable(n, t):
            op = Fp8BlockLinear.from_float(t)
            out[n], out[n + "_scale_inv"] = op.w8, op.scale_inv
        else:
            out[n] = t
    dst = tmp_path / "fp8"
    dst.mkdir()
    cfg = json.loads((src / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                  "weight_block_size": [128, 128]}
    (dst / "config.json").write_text(json.dumps(cfg))
    save_file(out, str(dst / "model.safetensors"))
    ckpt = Checkpoint(dst, load_config(dst))
    assert ckpt.format_info.name == "fp8" and ckpt.quant is None
    n = "model.layers.0.mlp.down_proj.weight"
    w8, s = read_fp8({"weight": ckpt.raw(n), "weight_scale_inv": ckpt.raw(n + "_scale_inv")}, n[:-7])
    exact = dequantize_fp8_exact(w8, s)
    assert torch.equal(ckpt.get(n), exact.to(torch.bfloat16))  # the loader's bf16 path, unchanged
    assert rel_err(exact, sd[n]) < 0.07  # e4m3: 3 mantissa bits


# ------------------------------------------------------------------------ repacks and bounds
def _src(group, sym, desc_act, seed=0, shape=(48, 256)):
    torch.manual_seed(seed)
    g_idx = qf.act_order_g_idx(shape[1], group, seed) if desc_act else None
    return qf.rtn_groups(torch.randn(shape) * 0.05, group, sym, g_idx)


@pytest.mark.parametrize("group,desc_act", [(64, False), (128, False), (128, True), (64, True)])
def test_cpu_int4_repack_is_exact_up_to_the_fp16_offset(group, desc_act):
    w = _src(group, False, desc_act)
    rp = to_cpu_int4(w)
    assert rp.exact and (rp.perm is not None) == desc_act
    src = w.dequantize()
    ours = rp.weight.dequantize()
    if rp.perm is not None:
        ours = ours[:, torch.argsort(rp.perm)]
    g_sorted = w.g_idx if rp.perm is None else w.g_idx[rp.perm]
    assert torch.equal(rp.weight.meta[..., 0].float(), w.scale.float()[:, g_sorted[::64]])  # fp16: as stored
    diff = (ours - src).abs()
    assert bool((diff <= rp.bound).all())
    # the stated bound: fp16 rounding of offset = -zero * scale, at most 2^-11 |zero * scale|
    zs = (w.zero.float() * w.scale.float())[:, w.g_idx]
    assert bool((diff <= 2.0 ** -11 * zs.abs() + 2.0 ** -23 * ours.abs()).all())
    assert float(diff.max()) > 0  # the offset rounding is real: the bound is what holds
    x = torch.randn(3, 256)
    xin = x if rp.perm is None else x[:, rp.perm]
    y = linear_dequant(xin, rp.weight)
    assert rel_err(y, x @ src.t()) < 1e-3


def test_cpu_int4_repack_of_group_32_requantizes_within_the_int4_bound():
    w = _src(32, True, False)
    rp = to_cpu_int4(w)
    assert not rp.exact and rp.perm is None
    assert bool(((rp.weight.dequantize() - w.dequantize()).abs() <= rp.bound).all())


@pytest.mark.parametrize("group,desc_act,want", [(32, False, 32), (128, True, 128), (64, False, 64), (128, False, 128)])
def test_gpu_int4_repack_keeps_the_grouping_up_to_bf16(group, desc_act, want):
    w = _src(group, False, desc_act, shape=(40, 256))
    op, exact = to_gpu_int4(w)
    assert exact and op.group == want
    s = w.scale.float()[:, w.g_idx]
    zq = (8 - w.zero.float()[:, w.g_idx]) * s
    bound = (w.q.float() - 8).abs() * (s.bfloat16().float() - s).abs() + (zq.bfloat16().float() - zq).abs()
    assert bool(((op.reference_weight() - w.dequantize()).abs() <= bound + 1e-7).all())
    for b in range(1, 6):
        x = torch.randn(b, 256)
        assert rel_err(op(x), op.reference(x)) < 1e-5


# ------------------------------------------------------------------------------- bad configs
@pytest.mark.parametrize("qc,key", [
    ({"quant_method": "gptq", "bits": 3, "group_size": 128}, "bits"),
    ({"quant_method": "gptq", "bits": 4, "checkpoint_format": "marlin"}, "checkpoint_format"),
    ({"quant_method": "awq", "bits": 4, "version": "gemv"}, "version"),
    ({"quant_method": "awq", "w_bit": 8}, "w_bit"),
    ({"quant_method": "compressed-tensors", "format": "float-quantized",
      "config_groups": {"group_0": {"weights": {"num_bits": 8, "type": "float"}}}}, "format"),
    ({"quant_method": "compressed-tensors", "format": "pack-quantized",
      "config_groups": {"group_0": {"weights": {"num_bits": 8, "type": "int"}}}}, "num_bits"),
    ({"quant_method": "bitsandbytes"}, "quant_method"),
])
def test_unsupported_configs_are_one_error_naming_the_key(qc, key):
    with pytest.raises(QuantFormatError, match=key):
        detect_format({"quantization_config": qc})


def test_3bit_checkpoint_and_missing_scales_fail_with_one_line(fixtures, tmp_path, capsys):
    path, _ = fixtures["gptq-g32-sym"]
    bad = tmp_path / "bad"
    bad.mkdir()
    cfg = json.loads((path / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "quantization_config": {**cfg["quantization_config"],
                                                                                "bits": 3}}))
    sd = load_file(str(path / "model.safetensors"))
    save_file(sd, str(bad / "model.safetensors"))
    code, _, err = run_cli(["generate", "--model", bad, "--prompt-ids", "1,2", "-n", "1"], capsys)
    assert code == 2 and "quantization_config.bits is 3" in err and len(err.strip().splitlines()) == 1
    (bad / "config.json").write_text(json.dumps(cfg))
    gone = "model.layers.3.mlp.up_proj.scales"
    save_file({k: v for k, v in sd.items() if k != gone}, str(bad / "model.safetensors"))
    with pytest.raises(HeteroQwenError, match=gone.replace(".", r"\.")):
        Checkpoint(bad, load_config(bad))
    code, _, err = run_cli(["info", "--model", bad], capsys)
    assert code == 2 and gone in err


@pytest.mark.parametrize("name", ["awq-g64", "gptq-g128-sym-desc_act"])
def test_quantize_from_a_community_checkpoint_keeps_its_integers_where_exact(fixtures, tmp_path, capsys, name):
    from hetero_qwen.quantized_checkpoint import load_packed
    path, known = fixtures[name]
    dst = tmp_path / "hq-int4"
    code, _, err = run_cli(["quantize", path, dst, "--dtype", "int4"], capsys)
    assert code == 0, err
    src, out = Checkpoint(path, load_config(path)), Checkpoint(dst, load_config(dst))
    assert out.format_info.describe() == "hetero-qwen int4 (written by `hetero-qwen quantize`)"
    assert not any(n.endswith(".qweight") for n in out.names())
    n = "model.layers.3.mlp.up_proj.weight"
    pw = load_packed(out, n, tuple(known[n].shape))
    rp = to_cpu_int4(src.quant.int_groups(n))
    if rp.perm is None:  # groups fit ours: the source integers, fp16 scale/offset
        assert torch.equal(pw.data, rp.weight.data) and torch.equal(pw.meta, rp.weight.meta)
    else:  # act-order cannot be stored in our layout: re-quantized from the exact weight
        assert bool(((pw.dequantize() - known[n]).abs() <= int4_error_bound(known[n])).all())
    hf = make_hf_model("causal", seed=0)
    hf.load_state_dict({**hf.state_dict(), **known})
    eng = hetero_qwen.load(dst, profile={"cpu": {"ram": "2GiB", "threads": 2}}, quiet=True)
    # int4 everywhere (the head too) with int8 activations, against fp32: top-1 as for our own int4
    # checkpoints (tests/test_quantized.py: >= 70% on this near-tie random model)
    agree = (eng.logits(IDS).argmax(-1) == hf_logits(hf, IDS).argmax(-1)).float().mean()
    assert agree >= 0.7, float(agree)


def test_a_multimodal_gptq_checkpoint_loads_with_its_vision_tower_kept(hf_cond, tmp_path):
    """The published checkpoints use the Qwen3_5ForConditionalGeneration layout
    (model.language_model.*) and keep the vision tower in 16 bits."""
    hf, src = hf_cond
    dst = tmp_path / "cond-gptq"
    known = qf.write_gptq(src, dst, group=32, sym=True)
    assert any(n.startswith("model.language_model.") for n in known)
    ckpt = Checkpoint(dst, load_config(dst))
    assert ckpt.facts["has_vision"] and not ckpt.facts["has_mtp"]
    ref_model = make_hf_model("cond", seed=1)
    ref_model.load_state_dict({**ref_model.state_dict(), **known})
    eng = hetero_qwen.load(dst, profile={"cpu": {"ram": "2GiB", "threads": 2}}, dtype="fp32", quiet=True)
    assert rel_err(eng.logits(IDS), hf_logits(ref_model, IDS)) < 1e-4
