"""Tiny community-format checkpoints written from known weights.

GPTQ and AWQ: round-to-nearest on each format's published grid, packed by our packers
(quant_formats.gptq.pack_gptq / awq.pack_awq, written from auto-gptq's and AutoAWQ's packing
loops; neither library installs on a CPU machine). compressed-tensors: quantized and packed by the
`compressed-tensors` library itself. Each returns the exact dequantized weights ("known").
In every format the embedding, the head, the norms and DeltaNet's in_proj_a / in_proj_b stay float,
as the published Qwen3.6 int4 checkpoints keep them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from hetero_qwen.quant_formats import FormatInfo, IntGroupWeight
from hetero_qwen.quant_formats.awq import pack_awq
from hetero_qwen.quant_formats.gptq import pack_gptq

INDEX = "model.safetensors.index.json"
KEEP_FLOAT = ("in_proj_a.", "in_proj_b.", "embed_tokens.", "lm_head.", "visual.", "mtp.")


def quantizable(name: str, t: torch.Tensor) -> bool:
    module = name.rsplit(".", 2)[-2] if name.endswith(".weight") else ""
    return t.dim() == 2 and "proj" in module and not any(k in name for k in KEEP_FLOAT)


def rtn_groups(w: torch.Tensor, group: int, sym: bool, g_idx: torch.Tensor | None = None,
               min_zero: int = 0, scale_dtype=torch.float16) -> IntGroupWeight:
    """GPTQ-style grid per group (range widened to include 0; symmetric: zero 8, scale 2 max|w| / 15)."""
    out, n = w.shape
    gs = group if group > 0 else n
    g_idx = torch.arange(n) // gs if g_idx is None else g_idx
    ng = int(g_idx.max()) + 1
    scale = torch.empty(out, ng)
    zero = torch.empty(out, ng)
    for g in range(ng):
        cols = w[:, g_idx == g].float()
        lo, hi = cols.amin(1).clamp(max=0), cols.amax(1).clamp(min=0)
        if sym:
            s, z = 2 * torch.maximum(lo.abs(), hi) / 15, torch.full((out,), 8.0)
        else:
            s = (hi - lo) / 15
            z = torch.round(-lo / s).clamp(min_zero, 15)
        scale[:, g], zero[:, g] = s.to(scale_dtype).float(), z
    s, z = scale[:, g_idx], zero[:, g_idx]
    q = torch.clamp(torch.round(w.float() / s) + z, 0, 15).to(torch.uint8)
    return IntGroupWeight(q, scale.to(scale_dtype), zero, g_idx, gs)


def act_order_g_idx(n: int, group: int, seed: int) -> torch.Tensor:
    """GPTQ desc_act: inputs are quantized in a permuted order, group = position // group."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    g = torch.empty(n, dtype=torch.int64)
    g[perm] = torch.arange(n) // group
    return g


def _copy_dir(src: Path, dst: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    dst.mkdir(parents=True)
    for f in src.iterdir():  # tokenizer, generation config...; weights and config are rewritten
        if f.is_file() and not f.name.endswith(".safetensors") and f.name not in ("config.json", INDEX):
            shutil.copy2(f, dst / f.name)
    sd = {}
    for f in sorted(src.glob("*.safetensors")):
        sd.update(load_file(str(f)))
    return json.loads((src / "config.json").read_text()), sd


def write_gptq(src: Path, dst: Path, group: int = 128, sym: bool = True, desc_act: bool = False,
               packing: str = "gptq", separate_config: bool = False) -> dict[str, torch.Tensor]:
    cfg, sd = _copy_dir(src, dst)
    info = FormatInfo("gptq", 4, group, sym, desc_act, packing=packing)
    out, known = {}, {}
    for i, (name, t) in enumerate(sorted(sd.items())):
        if not quantizable(name, t):
            out[name] = t
            continue
        g_idx = act_order_g_idx(t.shape[1], group, i) if desc_act else None
        w = rtn_groups(t, group, sym, g_idx, min_zero=1 if packing == "gptq" else 0)
        base = name[: -len(".weight")]
        out.update({f"{base}.{k}": v for k, v in pack_gptq(w, info).items()})
        known[name] = w.dequantize()
    qc = {"bits": 4, "group_size": group, "desc_act": desc_act, "sym": sym, "quant_method": "gptq",
          "checkpoint_format": packing, "damp_percent": 0.01, "true_sequential": True}
    if separate_config:
        (dst / "quantize_config.json").write_text(json.dumps(qc, indent=2))
    else:
        cfg["quantization_config"] = qc
    _write(dst, cfg, out)
    return known


def write_awq(src: Path, dst: Path, group: int = 128) -> dict[str, torch.Tensor]:
    cfg, sd = _copy_dir(src, dst)
    out, known = {}, {}
    for name, t in sorted(sd.items()):
        if not quantizable(name, t):
            out[name] = t
            continue
        w = rtn_groups(t, group, sym=False)
        base = name[: -len(".weight")]
        out.update({f"{base}.{k}": v for k, v in pack_awq(w).items()})
        known[name] = w.dequantize()
    cfg["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": group, "zero_point": True,
                                  "version": "gemm", "modules_to_not_convert": ["in_proj_a", "in_proj_b"]}
    _write(dst, cfg, out)
    return known


def write_compressed(src: Path, dst: Path, group: int = 32, sym: bool = True,
                     scale_dtype=torch.bfloat16) -> dict[str, torch.Tensor]:
    """Quantized and packed by compressed-tensors; known = the library's own decompress."""
    from compressed_tensors.compressors.pack_quantized import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme
    from compressed_tensors.quantization.utils import calculate_qparams
    cfg, sd = _copy_dir(src, dst)
    args = QuantizationArgs(num_bits=4, type="int", symmetric=sym, strategy="group", group_size=group)
    scheme = QuantizationScheme(targets=["Linear"], weights=args)
    out, known, ignore = {}, {}, []
    for name, t in sorted(sd.items()):
        if not quantizable(name, t) or t.shape[1] % group:  # the library needs whole groups
            out[name] = t
            if t.dim() == 2:
                ignore.append(name[: -len(".weight")])
            continue
        R, C = t.shape
        ng = -(-C // group)
        g = torch.nn.functional.pad(t.float(), (0, ng * group - C)).view(R, ng, group)  # 0s: in range anyway
        scale, zp = calculate_qparams(g.amin(-1), g.amax(-1), args)
        state = {"weight": t.float(), "weight_scale": scale.to(scale_dtype)}
        if not sym:
            state["weight_zero_point"] = zp
        packed = PackedQuantizationCompressor.compress(state, scheme)
        base = name[: -len(".weight")]
        out.update({f"{base}.{k}": v for k, v in packed.items()})
        # the library dequantizes in the scale's dtype; with the scales in fp32 it is exact
        known[name] = PackedQuantizationCompressor.decompress(
            {**packed, "weight_scale": packed["weight_scale"].float()}, scheme)["weight"]
    qc = QuantizationConfig(config_groups={"group_0": scheme}, format="pack-quantized", ignore=ignore,
                            quantization_status="compressed")
    cfg["quantization_config"] = qc.model_dump(exclude_none=True)
    _write(dst, cfg, out)
    return known


def _write(dst: Path, cfg: dict, tensors: dict[str, torch.Tensor]) -> None:
    (dst / "config.json").write_text(json.dumps(cfg, indent=2, default=str))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(dst / "model.safetensors"),
              metadata={"format": "pt"})
