"""Which quantized format a checkpoint directory is in, from its config (and tensor names).

`detect_format(cfg, tensor_names)` -> FormatInfo; every unsupported or inconsistent setting is one
QuantFormatError naming the key or tensor. `load_format_config(dir)` merges GPTQ's separate
`quantize_config.json` into the config dict. `checkpoint_facts` says whether the MTP head and the
vision tower were kept (quantizers often drop them).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from .spec import FormatInfo, QuantFormatError

QUANTIZE_CONFIG = "quantize_config.json"
INT_METHODS = ("gptq", "awq", "compressed-tensors")


def quantization_config(cfg: dict) -> dict | None:
    """The checkpoint's quantization_config: top level, under text_config, or a bare one."""
    if "quant_method" in cfg or "bits" in cfg or "w_bit" in cfg:
        return cfg
    q = cfg.get("quantization_config") or (cfg.get("text_config") or {}).get("quantization_config")
    return dict(q) if q else None


def load_format_config(directory: str | Path) -> dict:
    """config.json, with quantize_config.json (auto-gptq's own file) as its quantization_config
    when config.json has none."""
    d = Path(directory)
    try:
        cfg = json.loads((d / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise QuantFormatError(f"{d}/config.json: cannot read ({e})") from None
    qc = d / QUANTIZE_CONFIG
    if quantization_config(cfg) is None and qc.is_file():
        try:
            q = json.loads(qc.read_text())
        except json.JSONDecodeError as e:
            raise QuantFormatError(f"{qc}: not valid JSON ({e.msg})") from None
        q.setdefault("quant_method", "gptq")
        cfg = {**cfg, "quantization_config": q}
    return cfg


def _bits(q: dict, key: str, method: str) -> int:
    bits = q.get(key, 4)
    if bits != 4:
        raise QuantFormatError(f"quantization_config.{key} is {bits}: only 4-bit {method} is supported")
    return 4


def _gptq(q: dict) -> FormatInfo:
    bits = _bits(q, "bits", "GPTQ")
    packing = str(q.get("checkpoint_format") or q.get("format") or "gptq").lower()
    if packing not in ("gptq", "gptq_v2"):
        raise QuantFormatError(f"quantization_config.checkpoint_format is {packing!r}: only the gptq and "
                               f"gptq_v2 packings are supported (not marlin/bitblas/exllama repacks)")
    gs = int(q.get("group_size", 128))
    ignore = tuple(k[2:] for k in (q.get("dynamic") or {}) if str(k).startswith("-:"))
    return FormatInfo("gptq", bits, gs, bool(q.get("sym", True)), bool(q.get("desc_act", False)),
                      ignore, packing)


def _awq(q: dict) -> FormatInfo:
    bits = _bits(q, "bits" if "bits" in q else "w_bit", "AWQ")
    version = str(q.get("version", "gemm")).lower()
    if version != "gemm":
        raise QuantFormatError(f"quantization_config.version is {version!r}: only AutoAWQ's gemm packing "
                               f"is supported")
    if not q.get("zero_point", True):
        raise QuantFormatError("quantization_config.zero_point is false: AWQ gemm packing needs zero points")
    gs = int(q.get("group_size", q.get("q_group_size", 128)))
    return FormatInfo("awq", bits, gs, False, False, tuple(q.get("modules_to_not_convert") or ()), "gemm")


def _compressed(q: dict) -> FormatInfo:
    groups = q.get("config_groups") or {}
    if not groups:
        raise QuantFormatError("quantization_config.config_groups is missing or empty")
    infos = []
    for gname, g in groups.items():
        fmt = g.get("format") or q.get("format")
        if fmt != "pack-quantized":
            key = f"config_groups.{gname}.format" if g.get("format") else "format"
            raise QuantFormatError(f"quantization_config.{key} is {fmt!r}: only pack-quantized "
                                   f"(int4 W4A16) compressed-tensors checkpoints are supported")
        w = g.get("weights") or {}
        if w.get("num_bits") != 4 or w.get("type", "int") != "int":
            raise QuantFormatError(f"quantization_config.config_groups.{gname}.weights: num_bits "
                                   f"{w.get('num_bits')} type {w.get('type')!r}; only 4-bit int is supported")
        if g.get("input_activations"):
            raise QuantFormatError(f"quantization_config.config_groups.{gname}.input_activations: "
                                   f"quantized activations are not supported (W4A16 only)")
        strategy = w.get("strategy", "group")
        if strategy not in ("group", "channel"):
            raise QuantFormatError(f"quantization_config.config_groups.{gname}.weights.strategy is "
                                   f"{strategy!r}; group or channel only")
        gs = int(w.get("group_size") or -1) if strategy == "group" else -1
        act = w.get("actorder")
        infos.append(FormatInfo("compressed-tensors", 4, gs, bool(w.get("symmetric", True)),
                                act not in (None, False, "static"), tuple(q.get("ignore") or ()),
                                "pack-quantized"))
    return infos[0]


def _fp8(q: dict) -> FormatInfo:
    fmt = q.get("fmt", "e4m3")
    block = list(q.get("weight_block_size") or [128, 128])
    if fmt != "e4m3" or block != [128, 128]:
        raise QuantFormatError(f"quantization_config: fp8 fmt {fmt!r} with weight_block_size {block}; "
                               f"only e4m3 with 128x128 blocks is supported")
    return FormatInfo("fp8", 8, 128, True, False, tuple(q.get("modules_to_not_convert") or ()),
                      "e4m3-block128")


READERS = {"gptq": _gptq, "awq": _awq, "compressed-tensors": _compressed, "fp8": _fp8}
NEEDS = {"gptq": ("qweight", ("qzeros", "scales")), "awq": ("qweight", ("qzeros", "scales")),
         "compressed-tensors": ("weight_packed", ("weight_scale", "weight_shape"))}


def detect_format(cfg: dict, tensor_names: Iterable[str] | None = None) -> FormatInfo:
    """FormatInfo of a checkpoint from its config dict (config.json, merged with
    quantize_config.json by load_format_config) and, when given, its tensor names (checks
    that every packed weight has its companions)."""
    q = quantization_config(cfg)
    names = set(tensor_names or ())
    if q is None:
        packed = sorted(n for n in names if n.endswith((".qweight", ".weight_packed")))
        if packed:
            raise QuantFormatError(f"tensor {packed[0]} is packed, but config.json has no "
                                   f"quantization_config (and there is no {QUANTIZE_CONFIG})")
        return FormatInfo("none")
    method = str(q.get("quant_method", "")).lower()
    if method not in READERS:
        raise QuantFormatError(f"quantization_config.quant_method {method!r} is not supported; "
                               f"supported: {', '.join(READERS)}")
    info = READERS[method](q)
    if method in NEEDS and names:
        main, companions = NEEDS[method]
        for n in sorted(names):
            if n.endswith("." + main):
                base = n[: -len(main) - 1]
                for c in companions:
                    if f"{base}.{c}" not in names:
                        raise QuantFormatError(f"quantized weight {n} has no {base}.{c}")
        if not any(n.endswith("." + main) for n in names):
            raise QuantFormatError(f"quantization_config says {method}, but no tensor ends in .{main}")
    return info


def checkpoint_facts(tensor_names: Iterable[str]) -> dict[str, bool]:
    """Whether the checkpoint kept its MTP head and vision tower."""
    names = list(tensor_names)
    return {"has_mtp": any(n.startswith("mtp.") for n in names),
            "has_vision": any(n.startswith(("model.visual.", "visual.")) for n in names)}
