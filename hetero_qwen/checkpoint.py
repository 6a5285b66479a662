"""Lazy, memory-mapped reading of Hugging Face safetensors checkpoints.

We parse the safetensors header ourselves and map each shard copy-on-write, so a tensor is a
zero-copy view of the page cache until someone converts or copies it: peak RSS stays close to
what the caller keeps resident, and the disk tier can leave weights mapped for good.
Checkpoint quirks live in `canonical_name` (both name layouts) and `dequantize_fp8`.
"""

from __future__ import annotations

import json
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import ModelConfig
from .errors import CheckpointError

SAFETENSORS_DTYPES = {
    "BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
    "I8": torch.int8, "U8": torch.uint8, "I16": torch.int16, "I32": torch.int32, "I64": torch.int64,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


@dataclass(frozen=True)
class TensorEntry:
    shard: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int  # absolute byte offsets in the shard file
    end: int


def canonical_name(name: str, text_prefix: str) -> str:
    """Map `model.language_model.X` and `model.X` (text-only layout) onto `text_prefix + X`.
    Vision (`model.visual.*`, `visual.*`), `mtp.*` and `lm_head.*` keep their names."""
    for src in ("model.language_model.", "model."):
        if name.startswith(src) and not name.startswith("model.visual."):
            return text_prefix + name[len(src):]
    return name


class _Shard:
    def __init__(self, path: Path):
        self.path = path
        try:
            with open(path, "rb") as f:
                size = path.stat().st_size
                if size < 8:
                    raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes)")
                (hlen,) = struct.unpack("<Q", f.read(8))
                if hlen > size - 8 or hlen > 100_000_000:
                    raise CheckpointError(f"{path}: truncated or corrupt safetensors header")
                header = json.loads(f.read(hlen))
                self.mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if size > 8 + hlen else None
        except FileNotFoundError:
            raise CheckpointError(f"{path}: shard listed in the index is missing") from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CheckpointError(f"{path}: corrupt safetensors header") from None
        except OSError as e:
            raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
        base = 8 + hlen
        self.entries: dict[str, TensorEntry] = {}
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            dtype = SAFETENSORS_DTYPES.get(meta.get("dtype"))
            if dtype is None:
                raise CheckpointError(f"{path}: tensor {name} has unsupported dtype {meta.get('dtype')}")
            b, e = meta["data_offsets"]
            if base + e > size:
                raise CheckpointError(f"{path}: truncated: tensor {name} ends at byte {base + e} "
                                      f"but the file has {size} bytes (re-download this shard)")
            self.entries[name] = TensorEntry(path, dtype, tuple(meta["shape"]), base + b, base + e)

    def tensor(self, entry: TensorEntry) -> torch.Tensor:
        n = entry.end - entry.begin
        if n == 0:
            return torch.empty(entry.shape, dtype=entry.dtype)
        flat = torch.frombuffer(self.mm, dtype=torch.uint8, count=n, offset=entry.begin)
        return flat.view(entry.dtype).view(entry.shape)

    def release(self, entry: TensorEntry) -> None:
        """Drop this process's mapping of the whole pages inside `entry` (they stay in the page
        cache; a later read faults them back in, unchanged, since we never write to them)."""
        if self.mm is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        page = mmap.PAGESIZE
        lo, hi = -(-entry.begin // page) * page, entry.end // page * page
        if hi > lo:
            self.mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)


class Checkpoint:
    """All tensors of a checkpoint directory, by canonical name, read lazily."""

    def __init__(self, path: str | Path, cfg: ModelConfig):
        self.path = Path(path)
        self.cfg = cfg
        self._shards: dict[Path, _Shard] = {}
        self.entries: dict[str, TensorEntry] = {}
        self.raw_names: dict[str, str] = {}
        for shard_path in self._shard_files():
            shard = _Shard(shard_path)
            self._shards[shard_path] = shard
            for raw, entry in shard.entries.items():
                name = canonical_name(raw, cfg.text_prefix)
                self.entries[name] = entry
                self.raw_names[name] = raw

    def _shard_files(self) -> list[Path]:
        index = self.path / INDEX_FILE
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError):
                raise CheckpointError(f"{index}: not a valid safetensors index (no weight_map)") from None
            files = sorted({self.path / f for f in weight_map.values()})
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise CheckpointError(f"{self.path}: shard {missing[0]} listed in {INDEX_FILE} is missing"
                                      + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
            return files
        single = self.path / SINGLE_FILE
        if single.is_file():
            return [single]
        files = sorted(self.path.glob("*.safetensors"))
        if not files:
            raise CheckpointError(f"{self.path}: no safetensors weights ({SINGLE_FILE} or {INDEX_FILE})")
        return files

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def names(self, prefix: str = "") -> list[str]:
        return [n for n in self.entries if n.startswith(prefix)]

    def raw(self, name: str) -> torch.Tensor:
        """The stored tensor as a zero-copy view of the mapped file (do not write to it)."""
        entry = self.entries.get(name)
        if entry is None:
            raise CheckpointError(f"{self.path}: tensor {name} is missing from the checkpoint")
        return self._shards[entry.shard].tensor(entry)

    def release(self, name: str) -> None:
        """Unmap the pages of `name` after it was copied to its home, so loading a model keeps
        host RSS near the resident size instead of resident + every byte read from the file."""
        entry = self.entries.get(name)
        if entry is not None:
            self._shards[entry.shard].release(entry)

    def get(self, name: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        """A weight in a float dtype (FP8 blocks dequantized to bf16), its shape checked."""
        t = self.raw(name)
        if t.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
            scale_name = name + "_scale_inv"
            if scale_name not in self.entries:
                raise CheckpointError(f"{self.path}: FP8 tensor {name} has no {scale_name}")
            t = dequantize_fp8(t, self.raw(scale_name))
        if shape is not None and tuple(t.shape) != tuple(shape):
            raise CheckpointError(f"{self.path}: tensor {name} has shape {list(t.shape)}, "
                                  f"config.json implies {list(shape)}")
        return t

    def nbytes(self, name: str) -> int:
        e = self.entries[name]
        return e.end - e.begin

    def check_complete(self) -> None:
        """Every tensor the text model needs exists with the shape config.json implies
        (packed weights of a quantized checkpoint: with the byte size their format implies)."""
        packed = {}
        if self.cfg.hetero_format:
            from .quantized_checkpoint import load_packed, quantized_names
            packed = dict(quantized_names(self.cfg))
        for group in self.cfg.weight_groups():
            for local, shape in group.matrices + group.vectors:
                name = tensor_name(group.name, group.kind, local, self.cfg)
                if name in packed and name in self.entries:
                    load_packed(self, name, shape)
                    continue
                if name not in self.entries:
                    if group.kind == "head" and self.cfg.tie_word_embeddings:
                        continue
                    raise CheckpointError(f"{self.path}: tensor {name} is missing from the checkpoint")
                e = self.entries[name]
                if tuple(e.shape) != tuple(shape):
                    raise CheckpointError(f"{self.path}: tensor {name} has shape {list(e.shape)}, "
                                          f"config.json implies {list(shape)}")


    def mtp_missing(self) -> str | None:
        """Why the MTP layer cannot load (None when it can): config.json declares no MTP layer, or
        a tensor is missing (quantizers often drop `mtp.*`) or has another shape."""
        groups = self.cfg.mtp_weight_groups()
        if not groups:
            return "config.json declares no MTP layer (mtp_num_hidden_layers)"
        for group in groups:
            for local, shape in group.matrices + group.vectors:
                name = tensor_name(group.name, group.kind, local, self.cfg)
                if name not in self.entries:
                    return f"the checkpoint has no {name}"
                if tuple(self.entries[name].shape) != tuple(shape):
                    return f"{name} has shape {list(self.entries[name].shape)}, config.json implies {list(shape)}"
        return None


def tensor_name(group: str, kind: str, local: str, cfg: ModelConfig) -> str:
    """Full checkpoint name of a group's tensor. Layer norms belong to the layer, not the mixer;
    the final norm is listed with the head under its full name."""
    if local.endswith("layernorm.weight"):
        return group.rsplit(".", 1)[0] + "." + local
    if local.startswith(cfg.text_prefix):
        return local
    return f"{group}.{local}"


def dequantize_fp8(w: torch.Tensor, scale_inv: torch.Tensor, block: int = 128) -> torch.Tensor:
    """e4m3 weight [R, C] with per-block scales [ceil(R/b), ceil(C/b)] -> bf16 [R, C]."""
    R, C = w.shape
    s = scale_inv.float().repeat_interleave(block, 0)[:R].repeat_interleave(block, 1)[:, :C]
    return (w.float() * s).to(torch.bfloat16)
