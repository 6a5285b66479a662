"""Model configuration for the Qwen3.5/3.6 hybrid architecture (HF `model_type: qwen3_5`).

`ModelConfig.from_dict` accepts both `Qwen3_5ForConditionalGeneration` configs (text fields under
`text_config`) and text-only `Qwen3_5ForCausalLM` configs, ignores keys it does not use, and
rejects other architectures with one clear line. Derived sizes (per weight group, KV bytes per
token, recurrent-state bytes) live here so the planner can work from the config alone.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .errors import ConfigError
from .formats import FLOAT_BYTES, matrix_bytes

SUPPORTED_MODEL_TYPES = ("qwen3_5", "qwen3_5_text")
SUPPORTED_ARCHITECTURES = ("Qwen3_5ForConditionalGeneration", "Qwen3_5ForCausalLM")
HETERO_FORMATS = ("int8", "int4")  # `hetero_qwen_format` values written by `hetero-qwen quantize`
# the real Qwen3.6-27B's config: bf16, the official FP8, and a GPTQ int4 download (AxisQuant's settings)
PRESETS = {"qwen3.6-27b": "qwen3.6-27b.json", "qwen3.6-27b-fp8": "qwen3.6-27b-fp8.json",
           "qwen3.6-27b-int4": "qwen3.6-27b-int4.json"}

FULL = "full_attention"
LINEAR = "linear_attention"


@dataclass(frozen=True)
class RopeConfig:
    theta: float = 10_000_000.0
    partial_rotary_factor: float = 0.25
    rope_type: str = "default"  # "default" | "yarn"
    factor: float = 1.0
    original_max_position_embeddings: int | None = None
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attention_factor: float | None = None
    mscale: float | None = None
    mscale_all_dim: float | None = None
    truncate: bool = True


@dataclass(frozen=True)
class WeightGroup:
    """One unit of placement: a layer's mixer or FFN, the embedding, or the head.

    `name` is the checkpoint prefix (e.g. `model.language_model.layers.3.mlp`); `matrices` are the
    2-D weights that may be quantized, `vectors` the small float tensors that never are.
    """

    name: str
    kind: str  # "ffn" | "deltanet" | "attention" | "embed" | "head"
    layer: int | None
    matrices: tuple[tuple[str, tuple[int, int]], ...]
    vectors: tuple[tuple[str, tuple[int, ...]], ...] = ()

    @property
    def params(self) -> int:
        return sum(r * c for _, (r, c) in self.matrices) + sum(math.prod(s) for _, s in self.vectors)

    def nbytes(self, fmt: str = "bf16", vector_fmt: str = "fp32") -> int:
        """Resident bytes with matrices in `fmt` (vectors are kept in fp32 by the engine)."""
        mats = sum(matrix_bytes(r, c, fmt) for _, (r, c) in self.matrices)
        vecs = sum(math.prod(s) for _, s in self.vectors) * FLOAT_BYTES[vector_fmt]
        return mats + vecs

    def decode_read_bytes(self, fmt: str = "bf16") -> int:
        """Bytes one decode token reads: every weight, except the embedding reads a single row."""
        if self.kind == "embed":
            (_, (rows, cols)), = self.matrices
            return matrix_bytes(1, cols, fmt)
        return self.nbytes(fmt)


@dataclass(frozen=True)
class ModelConfig:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    linear_num_key_heads: int
    linear_num_value_heads: int
    linear_key_head_dim: int
    linear_value_head_dim: int
    linear_conv_kernel_dim: int
    vocab_size: int
    layer_types: tuple[str, ...]
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 262144
    tie_word_embeddings: bool = False
    attn_output_gate: bool = True
    rope: RopeConfig = field(default_factory=RopeConfig)
    eos_token_ids: tuple[int, ...] = ()
    bos_token_id: int | None = None
    torch_dtype: str = "bfloat16"
    multimodal: bool = False  # True for Qwen3_5ForConditionalGeneration (text under model.language_model)
    quantization: dict | None = None  # the checkpoint's quantization_config, if any
    hetero_format: str | None = None  # set by `hetero-qwen quantize`: "int8" | "int4"
    mtp_num_hidden_layers: int = 0  # multi-token-prediction layers (`mtp.*`; the 27B has 1)

    # ---- derived shapes -------------------------------------------------------------------
    @property
    def text_prefix(self) -> str:
        """Checkpoint prefix of the text model (after sanitize we always use this layout)."""
        return "model.language_model." if self.multimodal else "model."

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.rope.partial_rotary_factor)

    @property
    def linear_key_dim(self) -> int:  # 16 * 128 = 2048 for 27B
        return self.linear_num_key_heads * self.linear_key_head_dim

    @property
    def linear_value_dim(self) -> int:  # 48 * 128 = 6144 for 27B
        return self.linear_num_value_heads * self.linear_value_head_dim

    @property
    def linear_conv_dim(self) -> int:  # q, k, v channels that go through the causal conv
        return 2 * self.linear_key_dim + self.linear_value_dim

    @property
    def full_attention_layers(self) -> list[int]:
        return [i for i, t in enumerate(self.layer_types) if t == FULL]

    @property
    def linear_attention_layers(self) -> list[int]:
        return [i for i, t in enumerate(self.layer_types) if t == LINEAR]

    def layer_prefix(self, i: int) -> str:
        return f"{self.text_prefix}layers.{i}."

    def mixer_name(self, i: int) -> str:
        return "self_attn" if self.layer_types[i] == FULL else "linear_attn"

    # ---- weight groups --------------------------------------------------------------------
    def weight_groups(self) -> list[WeightGroup]:
        """Every placement unit in checkpoint order: embed, per layer (mixer, ffn), head.

        Layer norms ride with the op they feed: input_layernorm with the mixer,
        post_attention_layernorm with the FFN, the final norm with the head.
        """
        H, I = self.hidden_size, self.intermediate_size
        groups = [WeightGroup(f"{self.text_prefix}embed_tokens", "embed", None,
                              (("weight", (self.vocab_size, H)),))]
        for i in range(self.num_hidden_layers):
            p = self.layer_prefix(i)
            if self.layer_types[i] == FULL:
                qd, kvd = self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
                q_rows = qd * (2 if self.attn_output_gate else 1)  # per head [q, gate] interleaved
                groups.append(WeightGroup(
                    f"{p}self_attn", "attention", i,
                    (("q_proj.weight", (q_rows, H)), ("k_proj.weight", (kvd, H)),
                     ("v_proj.weight", (kvd, H)), ("o_proj.weight", (H, qd))),
                    (("q_norm.weight", (self.head_dim,)), ("k_norm.weight", (self.head_dim,)),
                     ("input_layernorm.weight", (H,)))))
            else:
                nv = self.linear_num_value_heads
                groups.append(WeightGroup(
                    f"{p}linear_attn", "deltanet", i,
                    (("in_proj_qkv.weight", (self.linear_conv_dim, H)),
                     ("in_proj_z.weight", (self.linear_value_dim, H)),
                     ("in_proj_b.weight", (nv, H)), ("in_proj_a.weight", (nv, H)),
                     ("out_proj.weight", (H, self.linear_value_dim))),
                    (("conv1d.weight", (self.linear_conv_dim, 1, self.linear_conv_kernel_dim)),
                     ("A_log", (nv,)), ("dt_bias", (nv,)), ("norm.weight", (self.linear_value_head_dim,)),
                     ("input_layernorm.weight", (H,)))))
            groups.append(WeightGroup(
                f"{p}mlp", "ffn", i,
                (("gate_proj.weight", (I, H)), ("up_proj.weight", (I, H)), ("down_proj.weight", (H, I))),
                (("post_attention_layernorm.weight", (H,)),)))
        groups.append(WeightGroup("lm_head", "head", None, (("weight", (self.vocab_size, H)),),
                                  ((f"{self.text_prefix}norm.weight", (H,)),)))
        return groups

    def mtp_weight_groups(self) -> list[WeightGroup]:
        """The MTP layer's groups (none when `mtp_num_hidden_layers` is 0), apart from
        `weight_groups()`: the trunk loads without them. `mtp` holds fc [H, 2H] and its three norms
        (pre_fc_norm_embedding, pre_fc_norm_hidden, the final `norm`); `mtp.layers.0.self_attn` and
        `mtp.layers.0.mlp` are one gated full-attention decoder layer, named like the trunk's.
        Embedding and head are the model's."""
        if not self.mtp_num_hidden_layers:
            return []
        H, I = self.hidden_size, self.intermediate_size
        qd, kvd = self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        q_rows = qd * (2 if self.attn_output_gate else 1)
        groups = [WeightGroup("mtp", "mtp_fc", None, (("fc.weight", (H, 2 * H)),),
                              (("pre_fc_norm_embedding.weight", (H,)), ("pre_fc_norm_hidden.weight", (H,)),
                               ("norm.weight", (H,))))]
        for i in range(self.mtp_num_hidden_layers):
            p = f"mtp.layers.{i}."
            groups.append(WeightGroup(
                f"{p}self_attn", "attention", None,
                (("q_proj.weight", (q_rows, H)), ("k_proj.weight", (kvd, H)),
                 ("v_proj.weight", (kvd, H)), ("o_proj.weight", (H, qd))),
                (("q_norm.weight", (self.head_dim,)), ("k_norm.weight", (self.head_dim,)),
                 ("input_layernorm.weight", (H,)))))
            groups.append(WeightGroup(
                f"{p}mlp", "ffn", None,
                (("gate_proj.weight", (I, H)), ("up_proj.weight", (I, H)), ("down_proj.weight", (H, I))),
                (("post_attention_layernorm.weight", (H,)),)))
        return groups

    # ---- caches ---------------------------------------------------------------------------
    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        """K and V of every full-attention layer for one token (64 KiB for 27B in bf16)."""
        return len(self.full_attention_layers) * 2 * self.num_key_value_heads * self.head_dim * dtype_bytes

    def deltanet_state_bytes(self) -> int:
        """Recurrent (fp32 [Hv, Dk, Dv]) + conv (fp32 [conv_dim, k-1]) state of all DeltaNet layers,
        for one sequence."""
        rec = self.linear_num_value_heads * self.linear_key_head_dim * self.linear_value_head_dim * 4
        conv = self.linear_conv_dim * (self.linear_conv_kernel_dim - 1) * 4
        return len(self.linear_attention_layers) * (rec + conv)

    # ---- parsing --------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: dict, source: str = "config.json") -> "ModelConfig":
        archs = raw.get("architectures") or []
        model_type = raw.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            got = f"model_type {model_type!r}" + (f" ({', '.join(archs)})" if archs else "")
            raise ConfigError(f"{source}: {got} is not a Qwen3.5/3.6 hybrid model; "
                              f"supported: model_type {' or '.join(SUPPORTED_MODEL_TYPES)}")
        bad = [a for a in archs if a not in SUPPORTED_ARCHITECTURES]
        if bad:
            raise ConfigError(f"{source}: architecture {bad[0]} is not supported; "
                              f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
        multimodal = "text_config" in raw
        if multimodal and not isinstance(raw["text_config"], dict):
            raise ConfigError(f"{source}: text_config must be a JSON object")
        text = dict(raw["text_config"]) if multimodal else dict(raw)
        if multimodal and "Qwen3_5ForCausalLM" in archs:
            multimodal = False
        num = _Numbers(text, source)
        try:
            n_layers = num.int("num_hidden_layers")
            hidden = num.int("hidden_size")
            n_heads = num.int("num_attention_heads")
            layer_types = text.get("layer_types")
            if layer_types is None:
                interval = num.int("full_attention_interval", 4)
                layer_types = [FULL if (i + 1) % interval == 0 else LINEAR for i in range(n_layers)]
            if (not isinstance(layer_types, list) or len(layer_types) != n_layers
                    or any(t not in (FULL, LINEAR) for t in layer_types)):
                raise ConfigError(f"{source}: layer_types must list {n_layers} entries of "
                                  f"'{FULL}' or '{LINEAR}'")
            rope = _parse_rope(text)
            eos = text.get("eos_token_id", raw.get("eos_token_id"))
            eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,))
            if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in eos_ids):
                raise ConfigError(f"{source}: eos_token_id must be a token id or a list of them, got {eos!r}")
            hetero_format = raw.get("hetero_qwen_format")
            if hetero_format is not None and hetero_format not in HETERO_FORMATS:
                raise ConfigError(f"{source}: hetero_qwen_format {hetero_format!r} is not one of "
                                  f"{', '.join(HETERO_FORMATS)} (written by `hetero-qwen quantize`)")
            cfg = cls(
                hidden_size=hidden,
                intermediate_size=num.int("intermediate_size"),
                num_hidden_layers=n_layers,
                num_attention_heads=n_heads,
                num_key_value_heads=num.int("num_key_value_heads", n_heads),
                head_dim=num.int("head_dim", hidden // n_heads, falsy_default=True),
                linear_num_key_heads=num.int("linear_num_key_heads", 16),
                linear_num_value_heads=num.int("linear_num_value_heads", 32),
                linear_key_head_dim=num.int("linear_key_head_dim", 128),
                linear_value_head_dim=num.int("linear_value_head_dim", 128),
                linear_conv_kernel_dim=num.int("linear_conv_kernel_dim", 4),
                vocab_size=num.int("vocab_size"),
                layer_types=tuple(layer_types),
                rms_norm_eps=num.float("rms_norm_eps", 1e-6),
                max_position_embeddings=num.int("max_position_embeddings", 262144),
                tie_word_embeddings=bool(raw.get("tie_word_embeddings", text.get("tie_word_embeddings", False))),
                attn_output_gate=bool(text.get("attn_output_gate", True)),
                rope=rope,
                eos_token_ids=eos_ids,
                bos_token_id=text.get("bos_token_id"),
                torch_dtype=str(text.get("dtype") or text.get("torch_dtype") or raw.get("dtype") or "bfloat16"),
                multimodal=multimodal,
                quantization=raw.get("quantization_config") or text.get("quantization_config"),
                hetero_format=hetero_format,
                mtp_num_hidden_layers=int(text.get("mtp_num_hidden_layers") or 0),
            )
        except KeyError as e:
            raise ConfigError(f"{source}: missing required key {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{source}: bad value: {e}") from None
        cfg._validate(source)
        return cfg

    def _validate(self, source: str) -> None:
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(f"{source}: num_attention_heads ({self.num_attention_heads}) is not a "
                              f"multiple of num_key_value_heads ({self.num_key_value_heads})")
        if self.linear_num_value_heads % self.linear_num_key_heads:
            raise ConfigError(f"{source}: linear_num_value_heads ({self.linear_num_value_heads}) is not a "
                              f"multiple of linear_num_key_heads ({self.linear_num_key_heads})")
        if self.rotary_dim % 2:
            raise ConfigError(f"{source}: rotary dim {self.rotary_dim} must be even")
        if self.quantization:  # fp8, gptq, awq, compressed-tensors int4; anything else is one line
            from .quant_formats import QuantFormatError, detect_format
            try:
                detect_format({"quantization_config": self.quantization})
            except QuantFormatError as e:
                raise ConfigError(f"{source}: {e}") from None


class _Numbers:
    """Typed reads of config.json values; an error names the key and the value."""

    def __init__(self, text: dict, source: str):
        self.text, self.source = text, source

    def int(self, key: str, default: int | None = None, falsy_default: bool = False) -> int:
        v = self.text.get(key)
        if v is None or (falsy_default and not v):
            if default is None:
                raise KeyError(key)
            return default
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ConfigError(f"{self.source}: {key} must be a positive integer, got {v!r}")
        return v

    def float(self, key: str, default: float) -> float:
        v = self.text.get(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ConfigError(f"{self.source}: {key} must be a positive number, got {v!r}")
        return float(v)


def _rope_number(key: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise ConfigError(f"config.json: {key} must be a positive number, got {v!r}")
    return float(v)


def _parse_rope(text: dict) -> RopeConfig:
    rp = text.get("rope_parameters") or text.get("rope_scaling") or {}
    if not isinstance(rp, dict):
        raise ConfigError(f"config.json: rope_parameters must be a JSON object, got {rp!r}")
    rp = dict(rp)
    theta = rp.get("rope_theta", text.get("rope_theta", 10_000_000.0))
    prf = rp.get("partial_rotary_factor", text.get("partial_rotary_factor", 0.25))
    rope_type = rp.get("rope_type", rp.get("type", "default"))
    if rope_type not in ("default", "yarn"):
        raise ConfigError(f"config.json: rope_type {rope_type!r} is not supported (default or yarn)")
    return RopeConfig(
        theta=_rope_number("rope_theta", theta), partial_rotary_factor=_rope_number("partial_rotary_factor", prf),
        rope_type=rope_type, factor=_rope_number("factor", rp.get("factor", 1.0)),
        original_max_position_embeddings=rp.get("original_max_position_embeddings"),
        beta_fast=float(rp.get("beta_fast") or 32.0), beta_slow=float(rp.get("beta_slow") or 1.0),
        attention_factor=rp.get("attention_factor"), mscale=rp.get("mscale"),
        mscale_all_dim=rp.get("mscale_all_dim"), truncate=bool(rp.get("truncate", True)),
    )


def is_preset(name: str | Path) -> bool:
    return str(name) in PRESETS


def load_raw_config(path_or_preset: str | Path) -> dict:
    name = str(path_or_preset)
    if name in PRESETS:
        return json.loads(resources.files("hetero_qwen.presets").joinpath(PRESETS[name]).read_text())
    if not name.strip():
        raise ConfigError("the model path is empty; give a checkpoint directory or a preset "
                          f"({', '.join(PRESETS)})")
    p = Path(path_or_preset)
    if not p.exists():
        raise ConfigError(f"{p}: no such model directory (or preset: {', '.join(PRESETS)})")
    if p.is_dir():
        cfg_path = p / "config.json"
    elif p.is_file() and p.suffix == ".json":
        cfg_path = p  # a config.json given directly (plan works from the config alone)
    elif p.is_file():
        raise ConfigError(f"{p}: is a file; give the checkpoint directory that holds config.json and the weights")
    else:  # a FIFO, socket or device: never open it (a FIFO would block)
        raise ConfigError(f"{p}: not a directory; give the checkpoint directory")
    if not cfg_path.is_file():
        what = "no config.json in this directory" if not cfg_path.exists() else "config.json is not a regular file"
        raise ConfigError(f"{p}: {what}")
    try:
        raw = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{cfg_path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{cfg_path}: not UTF-8 text (byte {e.start}); config.json must be JSON") from None
    except OSError as e:
        raise ConfigError(f"{cfg_path}: cannot read ({e.strerror})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{cfg_path}: must be a JSON object of settings, not a {type(raw).__name__}")
    return raw


def load_config(path_or_preset: str | Path) -> ModelConfig:
    """Config of a model directory, a config.json path, or a preset name like `qwen3.6-27b`."""
    raw = load_raw_config(path_or_preset)
    return ModelConfig.from_dict(raw, source=f"{path_or_preset}")
