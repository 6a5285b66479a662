import pytest

from hetero_qwen.config import ModelConfig, load_config
from hetero_qwen.errors import ConfigError


def test_27b_preset_sizes_match_design():
    cfg = load_config("qwen3.6-27b")
    by_kind = {}
    for g in cfg.weight_groups():
        by_kind[g.kind] = by_kind.get(g.kind, 0) + g.params
    assert len(cfg.full_attention_layers) == 16 and len(cfg.linear_attention_layers) == 48
    assert cfg.full_attention_layers[0] == 3
    assert by_kind["ffn"] == 64 * (3 * 5120 * 17408 + 5120)              # 17.1 B (+ its layer norm)
    assert round(by_kind["deltanet"] * 2 / 1e9, 1) == 11.1                   # GB in bf16
    assert round(by_kind["attention"] * 2 / 1e9, 1) == 3.4
    assert cfg.kv_bytes_per_token() == 64 * 1024                             # 64 KiB per token
    assert cfg.deltanet_state_bytes() // 2**20 == 149                        # ~150 MiB
    assert cfg.text_prefix == "model.language_model."


def test_fp8_preset_parses():
    cfg = load_config("qwen3.6-27b-fp8")
    assert cfg.quantization["weight_block_size"] == [128, 128]


def test_text_only_layout_and_defaults():
    cfg = ModelConfig.from_dict({"model_type": "qwen3_5_text", "architectures": ["Qwen3_5ForCausalLM"],
                                 "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 8,
                                 "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100,
                                 "linear_num_key_heads": 2, "linear_num_value_heads": 4, "unknown_key": 1})
    assert cfg.text_prefix == "model."
    assert cfg.layer_types[3] == "full_attention" and cfg.layer_types[2] == "linear_attention"


@pytest.mark.parametrize("raw,needle", [
    ({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}, "not a Qwen3.5"),
    ({"model_type": "qwen3_5_text", "hidden_size": 8}, "missing required key"),
    ({"model_type": "qwen3_5_text", "architectures": ["Qwen3NextForCausalLM"]}, "not supported"),
])
def test_bad_configs_are_one_line_errors(raw, needle):
    with pytest.raises(ConfigError, match=needle) as e:
        ModelConfig.from_dict(raw)
    assert "\n" not in str(e.value)
