"""The embedded default model: a deterministic tiny random Qwen3.5 checkpoint with a byte-level
BPE tokenizer carrying the Qwen special tokens and our chat template.

Commands that take `--model` fall back to it (written once under the user cache dir) so a new
user can try every command before downloading 54 GB. Its weights are random: replies are noise.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from .config import ModelConfig
from .errors import InputError
from .safe_write import atomic_dir

TINY_SEED = 1234


def tiny_config_dict(vocab_size: int, eos_ids: list[int], bos_id: int) -> dict:
    layer_types = ["linear_attention", "linear_attention", "linear_attention", "full_attention"] * 2
    return {
        "architectures": ["Qwen3_5ForCausalLM"], "model_type": "qwen3_5_text",
        "vocab_size": vocab_size, "hidden_size": 128, "intermediate_size": 256,
        "num_hidden_layers": len(layer_types), "layer_types": layer_types,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
        "linear_num_key_heads": 2, "linear_num_value_heads": 4,
        "linear_key_head_dim": 32, "linear_value_head_dim": 32, "linear_conv_kernel_dim": 4,
        "rms_norm_eps": 1e-6, "max_position_embeddings": 8192, "tie_word_embeddings": False,
        "attn_output_gate": True, "hidden_act": "silu",
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000000.0, "partial_rotary_factor": 0.25},
        "eos_token_id": eos_ids[-1], "bos_token_id": bos_id, "dtype": "float32",
        "hetero_qwen_note": "random weights written by `hetero-qwen make-tiny`",
    }


def tiny_weights(cfg: ModelConfig, seed: int = TINY_SEED) -> dict[str, torch.Tensor]:
    """Every tensor of the text model, N(0, 0.02) matrices and small random vectors."""
    from .checkpoint import tensor_name
    g = torch.Generator().manual_seed(seed)
    out = {}
    for group in cfg.weight_groups():
        for local, shape in group.matrices:
            out[tensor_name(group.name, group.kind, local, cfg)] = torch.randn(shape, generator=g) * 0.05
        for local, shape in group.vectors:
            name = tensor_name(group.name, group.kind, local, cfg)
            if local == "A_log":
                t = torch.log(torch.rand(shape, generator=g) * 4 + 0.5)
            elif local in ("dt_bias", "conv1d.weight"):
                t = torch.rand(shape, generator=g) * 0.5
            elif local == "norm.weight":  # DeltaNet output norm multiplies by plain w
                t = 1 + torch.randn(shape, generator=g) * 0.1
            else:  # zero-centred norms: (1 + w)
                t = torch.randn(shape, generator=g) * 0.1
            out[name] = t
    return out


def write_tiny(dest: str | Path, force: bool = False) -> Path:
    """Write the tiny model to `dest`: a new (or empty) directory, or with `force` a replacement for
    an existing one; built beside it and renamed into place only when complete."""
    from .tiny_tokenizer import TINY_VOCAB_SIZE, tiny_special_token_ids, write_tiny_tokenizer
    dest = Path(dest)
    special = tiny_special_token_ids(TINY_VOCAB_SIZE)
    eos = [special["<|im_end|>"], special["<|endoftext|>"]]
    raw = tiny_config_dict(TINY_VOCAB_SIZE, eos, special["<|endoftext|>"])
    cfg = ModelConfig.from_dict(raw)
    with atomic_dir(dest, force=force, what="tiny model directory") as tmp:
        (tmp / "config.json").write_text(json.dumps(raw, indent=2) + "\n")
        (tmp / "generation_config.json").write_text(json.dumps(
            {"eos_token_id": eos, "bos_token_id": special["<|endoftext|>"], "do_sample": True,
             "temperature": 1.0, "top_p": 0.95, "top_k": 20}, indent=2) + "\n")
        save_file(tiny_weights(cfg), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        write_tiny_tokenizer(tmp, TINY_VOCAB_SIZE)
    return dest


def default_tiny_dir() -> Path:
    """$HETERO_QWEN_HOME/tiny-random, else $XDG_CACHE_HOME/hetero-qwen/..., else ~/.cache/hetero-qwen/...;
    a variable that points at something other than a directory is one clear error."""
    for var, base in (("HETERO_QWEN_HOME", ""), ("XDG_CACHE_HOME", "hetero-qwen")):
        value = os.environ.get(var)
        if value:
            _check_cache_base(var, Path(value))
            return Path(value) / base / "tiny-random" if base else Path(value) / "tiny-random"
    home = os.environ.get("HOME") or os.path.expanduser("~")
    _check_cache_base("HOME", Path(home))
    return Path(home) / ".cache" / "hetero-qwen" / "tiny-random"


def _check_cache_base(var: str, path: Path) -> None:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(f"${var} is {str(path)!r}, and {probe} is not a directory; point {var} at a "
                         f"directory for the cache (the embedded tiny model is written there)")


def ensure_tiny() -> Path:
    """The embedded tiny model's directory, written on first use."""
    d = default_tiny_dir()
    if _complete(d):
        return d
    if d.exists() and (not d.is_dir() or any(d.iterdir())):
        raise InputError(f"{d} holds something other than a complete tiny model; remove it, or rewrite it "
                         f"with `hetero-qwen make-tiny --force {d}`")
    try:
        return write_tiny(d)
    except InputError:
        if _complete(d):  # another process wrote it at the same time
            return d
        raise


def _complete(d: Path) -> bool:
    return (d / "config.json").is_file() and (d / "model.safetensors").is_file() and (d / "tokenizer.json").is_file()
