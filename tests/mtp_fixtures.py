"""Tiny checkpoints with an MTP layer: transformers neither makes nor saves `mtp.*` tensors, so we
add random ones (shapes from ModelConfig.mtp_weight_groups) to a saved tiny checkpoint, in a shard
of their own listed in the index, and set `mtp_num_hidden_layers: 1` in config.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from hetero_qwen.checkpoint import tensor_name
from hetero_qwen.config import load_config

MTP_SHARD = "model-mtp.safetensors"


def add_mtp(src: Path, dst: Path, seed: int = 7, scale: float = 0.08) -> Path:
    """Copy the checkpoint at `src` to `dst` and give it random `mtp.*` tensors."""
    shutil.copytree(src, dst)
    raw = json.loads((dst / "config.json").read_text())
    text = raw.get("text_config", raw)
    text["mtp_num_hidden_layers"] = 1
    (dst / "config.json").write_text(json.dumps(raw, indent=2))
    cfg = load_config(dst)
    dtype = torch.float32 if cfg.torch_dtype == "float32" else torch.bfloat16
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for group in cfg.mtp_weight_groups():
        for local, shape in group.matrices + group.vectors:
            std = 0.1 if len(shape) == 1 else scale
            tensors[tensor_name(group.name, group.kind, local, cfg)] = (torch.randn(shape, generator=g) * std).to(dtype)
    save_file(tensors, str(dst / MTP_SHARD), metadata={"format": "pt"})
    index = dst / "model.safetensors.index.json"
    if index.is_file():
        meta = json.loads(index.read_text())
    else:  # one model.safetensors: an index that lists it and the new shard
        from safetensors import safe_open
        with safe_open(str(dst / "model.safetensors"), "pt") as f:
            meta = {"metadata": {}, "weight_map": {name: "model.safetensors" for name in f.keys()}}
    meta["weight_map"].update({name: MTP_SHARD for name in tensors})
    index.write_text(json.dumps(meta, indent=2))
    return dst
