"""Pre-quantized checkpoints: `hetero-qwen quantize SRC DST --dtype int8|int4`.

Every 2-D weight of the text model except the embedding (a row gather, kept in bf16) is stored
in its CPU kernel format: the packed values under the weight's own name and the scales/offsets
under `<name>.hq_meta`. config.json records `"hetero_qwen_format": "int8" | "int4"`, so the
loader hands the packed tensors straight to the CPU kernels (no re-quantization, and a disk-tier
group stays a view of the mapped file). Vision and MTP tensors are copied unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterable

import torch
from safetensors.torch import save_file

# the reading side (names, META_SUFFIX, load_packed) lives in checkpoint.py; re-exported here
from .checkpoint import INDEX_FILE, META_SUFFIX, Checkpoint, load_packed, quantized_names  # noqa: F401
from .config import ModelConfig, load_raw_config
from .errors import CheckpointError, InputError

SHARD_BYTES = 2 * 2**30
COPY_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "chat_template.jinja",
              "special_tokens_map.json", "vocab.json", "merges.txt", "preprocessor_config.json")


class ShardWriter:
    """Buffers tensors and writes ~2 GiB safetensors shards plus the index."""

    def __init__(self, directory: Path, shard_bytes: int = SHARD_BYTES):
        self.dir, self.shard_bytes = directory, shard_bytes
        self.buffer: dict[str, torch.Tensor] = {}
        self.size = 0
        self.n = 0
        self.weight_map: dict[str, str] = {}

    def add(self, name: str, t: torch.Tensor) -> None:
        self.buffer[name] = t.contiguous()
        self.size += t.numel() * t.element_size()
        if self.size >= self.shard_bytes:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        self.n += 1
        fname = f"model-{self.n:05d}.safetensors"
        save_file(self.buffer, str(self.dir / fname), metadata={"format": "pt"})
        self.weight_map.update({k: fname for k in self.buffer})
        self.buffer, self.size = {}, 0

    def close(self) -> None:
        self.flush()
        (self.dir / INDEX_FILE).write_text(json.dumps({"metadata": {}, "weight_map": self.weight_map}, indent=1))


def write_checkpoint_atomically(dst: Path, fill: Callable[[Path], None]) -> Path:
    """Run `fill(tmp_dir)` and move the result to `dst`; nothing half-written is left behind."""
    dst = Path(dst)
    if dst.exists() and any(dst.iterdir()):
        raise InputError(f"{dst} exists and is not empty; choose a new directory")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        fill(tmp)
        if dst.exists():
            dst.rmdir()
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst


def quantize_checkpoint(src: str | Path, dst: str | Path, fmt: str,
                        progress: Callable[[Iterable], Iterable] = lambda it: it) -> Path:
    from .quant_formats.convert import packed_weight, tensor_names
    if fmt not in ("int8", "int4"):
        raise InputError(f"--dtype must be int8 or int4, got {fmt!r}")
    src = Path(src)
    raw = load_raw_config(src)
    cfg = ModelConfig.from_dict(raw, source=str(src))
    if cfg.hetero_format:
        raise InputError(f"{src} is already quantized ({cfg.hetero_format})")
    ckpt = Checkpoint(src, cfg)
    ckpt.check_complete()
    packed = dict(quantized_names(cfg))

    def fill(tmp: Path) -> None:
        w = ShardWriter(tmp)
        for name, raw_name in progress(tensor_names(ckpt)):  # GPTQ/AWQ/... parts: once, as X.weight
            if name.endswith("_scale_inv") and name[: -len("_scale_inv")] in ckpt:
                continue  # FP8 scales: folded in by ckpt.get below
            t = ckpt.get(name)
            if name in packed:
                pw = packed_weight(ckpt, name, t, fmt)
                w.add(raw_name, pw.data)
                w.add(raw_name + META_SUFFIX, pw.meta)
            else:
                w.add(raw_name, t.clone())
        w.close()
        out = dict(raw)
        out.pop("quantization_config", None)
        if "text_config" in out:
            out["text_config"] = {k: v for k, v in out["text_config"].items() if k != "quantization_config"}
        out["hetero_qwen_format"] = fmt
        (tmp / "config.json").write_text(json.dumps(out, indent=2) + "\n")
        for f in COPY_FILES:
            if (src / f).is_file():
                shutil.copy2(src / f, tmp / f)

    return write_checkpoint_atomically(Path(dst), fill)
