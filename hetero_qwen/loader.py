"""`hetero_qwen.load`: from a checkpoint directory to a ready Engine."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from .checkpoint import Checkpoint
from .config import is_preset, load_config
from .engine import Engine
from .executor.devices import make_devices
from .executor.placement import build_placed_model, cpu_only_placements
from .errors import CheckpointError, ConfigError

DEFAULT_CONTEXT = 32768

DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp32": torch.float32,
          "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16}


def checkpoint_dtype(cfg) -> torch.dtype:
    """Compute dtype matching the checkpoint: fp32 stays fp32, everything else runs in bf16."""
    return {"float32": torch.float32, "float16": torch.float16}.get(cfg.torch_dtype, torch.bfloat16)


def generation_eos_ids(path: Path) -> tuple[int, ...]:
    """eos ids from generation_config.json when present (it lists <|im_end|> too)."""
    gc = path / "generation_config.json"
    if not gc.is_file():
        return ()
    try:
        eos = json.loads(gc.read_text()).get("eos_token_id")
    except json.JSONDecodeError:
        raise CheckpointError(f"{gc}: not valid JSON") from None
    if eos is None:
        return ()
    return tuple(eos) if isinstance(eos, list) else (int(eos),)


def _progress(desc: str, quiet: bool):
    if quiet or not sys.stderr.isatty():
        return lambda it: it
    from tqdm import tqdm
    return lambda it: tqdm(it, desc=desc, unit="layer", leave=False, file=sys.stderr)


def load(path_or_preset: str | Path, profile=None, dtype: str | torch.dtype | None = None,
         context: int | None = None, quiet: bool = False) -> Engine:
    """Load a Qwen3.5/3.6 checkpoint directory into an Engine (CPU execution)."""
    if is_preset(path_or_preset):
        raise ConfigError(f"{path_or_preset} is a shape preset without weights; it works with "
                          f"`plan` and benches. Pass a checkpoint directory to run a model")
    path = Path(path_or_preset)
    cfg = load_config(path)
    ckpt = Checkpoint(path, cfg)
    ckpt.check_complete()
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ConfigError(f"unknown dtype {dtype!r}; use bf16, fp16 or fp32")
        dtype = DTYPES[dtype]
    dtype = dtype or checkpoint_dtype(cfg)
    devices = make_devices(None, None)
    model = build_placed_model(ckpt, cpu_only_placements(cfg), devices, dtype, progress=_progress("loading", quiet))
    ctx = min(context or DEFAULT_CONTEXT, cfg.max_position_embeddings)
    return Engine(cfg, model, path, ctx, eos_ids=generation_eos_ids(path) or cfg.eos_token_ids)
