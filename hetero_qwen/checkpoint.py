"""Lazy, memory-mapped reading of Hugging Face safetensors checkpoints.

We parse the safetensors header ourselves and map each shard copy-on-write, so a tensor is a
zero-copy view of the page cache until someone converts or copies it: peak RSS stays close to
what the caller keeps resident, and the disk tier can leave weights mapped for good.
Checkpoint quirks live in `canonical_name` (both name layouts) and `dequantize_fp8`; community int4
formats (GPTQ, AWQ, compressed-tensors) are read through `hetero_qwen.quant_formats` (`self.quant`).
"""

from __future__ import annotations

import json
import math
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


def _offsets_and_shape(path: Path, name: str, meta: dict) -> tuple[int, int, tuple[int, ...]]:
    offsets, shape = meta.get("data_offsets"), meta.get("shape")
    ints = lambda xs: isinstance(xs, list) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in xs)
    if not ints(offsets) or len(offsets) != 2 or offsets[0] > offsets[1] or not ints(shape):
        raise CheckpointError(f"{path}: corrupt safetensors header entry for {name} "
                              f"(data_offsets {offsets!r}, shape {shape!r})")
    return offsets[0], offsets[1], tuple(shape)


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
        if not isinstance(header, dict):
            raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            if not isinstance(meta, dict):
                raise CheckpointError(f"{path}: corrupt safetensors header entry for {name}")
            dtype = SAFETENSORS_DTYPES.get(meta.get("dtype"))
            if dtype is None:
                raise CheckpointError(f"{path}: tensor {name} has unsupported dtype {meta.get('dtype')}")
            b, e, shape = _offsets_and_shape(path, name, meta)
            want = math.prod(shape) * dtype.itemsize
            if e - b != want:
                raise CheckpointError(f"{path}: tensor {name} spans {e - b} bytes, but {meta['dtype']} "
                                      f"{list(shape)} needs {want} (corrupt header or wrong dtype label)")
            if base + e > size:
                raise CheckpointError(f"{path}: truncated: tensor {name} ends at byte {base + e} "
                                      f"but the file has {size} bytes (re-download this shard)")
            self.entries[name] = TensorEntry(path, dtype, shape, base + b, base + e)

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
        from .quant_formats.hook import attach
        self.format_info, self.quant, self.facts = attach(self)

    def _shard_files(self) -> list[Path]:
        index = self.path / INDEX_FILE
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, IndexError):
                raise CheckpointError(f"{index}: not a valid safetensors index (an object with a weight_map)") from None
            if not isinstance(weight_map, dict) or not all(
                    isinstance(f, str) and f and Path(f).name == f for f in weight_map.values()):
                raise CheckpointError(f"{index}: weight_map must map tensor names to shard file names")
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
        return name in self.entries or (self.quant is not None and name in self.quant)

    def shape(self, name: str) -> tuple[int, ...]:
        if self.quant is not None and name in self.quant:
            return self.quant.shape(name)
        return self.entries[name].shape

    def names(self, prefix: str = "") -> list[str]:
        return [n for n in self.entries if n.startswith(prefix)]

    def raw(self, name: str) -> torch.Tensor:
        """The stored tensor as a zero-copy view of the mapped file (do not write to it)."""
        entry = self.entries.get(name)
        if entry is None:
            raise CheckpointError(f"{self.path}: tensor {name} is missing from the checkpoint")
        return self._shards[entry.shard].tensor(entry)

    def is_fp8(self, name: str) -> bool:
        """Whether `name` is stored as e4m3 with 128x128 block scales (the official FP8 layout)."""
        e = self.entries.get(name)
        return (e is not None and name + "_scale_inv" in self.entries
                and self.raw(name).dtype == torch.float8_e4m3fn)

    def release(self, name: str) -> None:
        """Unmap the pages of `name` after it was copied to its home, so loading a model keeps
        host RSS near the resident size instead of resident + every byte read from the file."""
        if self.quant is not None and name in self.quant:
            for part in self.quant.part_names(name):
                self.release(part)
            return
        entry = self.entries.get(name)
        if entry is not None:
            self._shards[entry.shard].release(entry)

    def get(self, name: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        """A weight in a float dtype (FP8 blocks dequantized to bf16, GPTQ/AWQ/compressed-tensors
        int4 dequantized exactly to the checkpoint's dtype), its shape checked."""
        if self.quant is not None and name in self.quant:
            t = self.quant.dequantize(name)
        else:
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
        if self.quant is not None and name in self.quant:
            return sum(self.nbytes(p) for p in self.quant.part_names(name))
        e = self.entries[name]
        return e.end - e.begin

    def check_complete(self) -> None:
        """Every tensor the text model needs exists with the shape config.json implies
        (packed weights of a quantized checkpoint: with the byte size their format implies)."""
        packed = {}
        if self.cfg.hetero_format:
            packed = dict(quantized_names(self.cfg))
        else:
            meta = next((n for n in self.entries if n.endswith(".hq_meta")), None)
            if meta is not None:
                raise CheckpointError(f"{self.path}: holds packed weights ({meta}) but config.json has no "
                                      f"hetero_qwen_format; restore it (\"int8\" or \"int4\", as quantized)")
        for group in self.cfg.weight_groups():
            for local, shape in group.matrices + group.vectors:
                name = tensor_name(group.name, group.kind, local, self.cfg)
                if name in packed and name in self.entries:
                    load_packed(self, name, shape)
                    continue
                if name not in self:
                    if group.kind == "head" and self.cfg.tie_word_embeddings:
                        continue
                    raise CheckpointError(f"{self.path}: tensor {name} is missing from the checkpoint")
                if tuple(self.shape(name)) != tuple(shape):
                    raise CheckpointError(f"{self.path}: tensor {name} has shape {list(self.shape(name))}, "
                                          f"config.json implies {list(shape)}")
                e = self.entries.get(name)  # None: a community-quantized weight, dequantized on read
                if e is not None and not e.dtype.is_floating_point:
                    raise CheckpointError(f"{self.path}: tensor {name} is stored as {str(e.dtype).removeprefix('torch.')}"
                                          f"; weights must be a float dtype (BF16, F16, F32, F8)")


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


# ---- reading a pre-quantized checkpoint (written by quantized_checkpoint.py)
META_SUFFIX = ".hq_meta"  # a packed weight's scales/offsets are stored under `<name>.hq_meta`
QUANTIZED_KINDS = ("ffn", "deltanet", "attention", "head")


def quantized_names(cfg: ModelConfig) -> list[tuple[str, tuple[int, int]]]:
    """(full name, [out, in]) of every matrix a quantized checkpoint stores packed."""
    out = []
    for g in cfg.weight_groups():
        if g.kind in QUANTIZED_KINDS:
            out += [(tensor_name(g.name, g.kind, local, cfg), shape) for local, shape in g.matrices]
    return out


def load_packed(ckpt: Checkpoint, name: str, shape: tuple[int, int]):
    """The PackedWeight stored for `name` in a quantized checkpoint (zero-copy views of the file)."""
    from .formats import matrix_bytes
    from .kernels.quant import PackedWeight
    fmt = ckpt.cfg.hetero_format
    meta_name = name + META_SUFFIX
    if meta_name not in ckpt:
        raise CheckpointError(f"{ckpt.path}: {name} has no {meta_name} (config.json says {fmt})")
    data, meta = ckpt.raw(name), ckpt.raw(meta_name)
    pw = PackedWeight(fmt, data, meta, shape[0], shape[1])
    if pw.nbytes != matrix_bytes(shape[0], shape[1], fmt):
        raise CheckpointError(f"{ckpt.path}: {name} holds {pw.nbytes} bytes, {fmt} {list(shape)} needs "
                              f"{matrix_bytes(shape[0], shape[1], fmt)}")
    return pw
