"""What Checkpoint asks at open time: the format found, the packed weights under their float
names, and whether the MTP head / vision tower were kept."""

from __future__ import annotations

import torch

from .detect import checkpoint_facts, detect_format, load_format_config
from .reader import LAYOUTS, QuantizedTensors
from .spec import FormatInfo


def attach(ckpt) -> tuple[FormatInfo, QuantizedTensors | None, dict[str, bool]]:
    names = list(ckpt.entries)
    facts = checkpoint_facts(ckpt.raw_names.values())
    if ckpt.cfg.hetero_format:  # our own pre-quantized checkpoints (quantized_checkpoint.py)
        return FormatInfo("hetero-qwen", 8 if ckpt.cfg.hetero_format == "int8" else 4,
                          packing=ckpt.cfg.hetero_format), None, facts
    cfg = load_format_config(ckpt.path) if (ckpt.path / "config.json").is_file() else {}
    info = detect_format(cfg, names)
    if info.name not in LAYOUTS:
        return info, None, facts
    dtype = torch.float32 if ckpt.cfg.torch_dtype == "float32" else torch.bfloat16
    return info, QuantizedTensors(info, names, ckpt.raw, dtype), facts
