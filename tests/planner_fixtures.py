"""A tiny config with the 27B's structure (both layer types, GQA, value heads > key heads) so the
planner tests run in milliseconds; sizes are a few KiB per group."""

from hetero_qwen.config import ModelConfig


def tiny_config(layers: int = 8) -> ModelConfig:
    return ModelConfig.from_dict({
        "model_type": "qwen3_5_text", "architectures": ["Qwen3_5ForCausalLM"],
        "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": layers,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
        "linear_num_key_heads": 2, "linear_num_value_heads": 4, "linear_key_head_dim": 16,
        "linear_value_head_dim": 16, "linear_conv_kernel_dim": 4, "vocab_size": 512,
        "full_attention_interval": 4,
    }, source="tiny")


def tiny_profile_dict(**over) -> dict:
    """Budgets in bytes sized for `tiny_config` (weights ~0.5 MiB in bf16 in all)."""
    d = {
        "gpu": {"vram": 400_000, "reserve": 10_000, "flops": "10TFLOPS"},
        "cpu": {"ram": 2_000_000, "reserve": 10_000, "pinned": 1_000_000, "flops": "1TFLOPS"},
        "context": 256,
        "bandwidth": {"gpu": "1000GB/s", "cpu": "60GB/s", "pcie": "25GB/s", "disk": "3GB/s"},
        "prefill": {"chunk": 64},
        "workload": {"prompt_tokens": 128, "output_tokens": 32},
    }
    for key, value in over.items():
        section, _, name = key.partition("__")
        if name:
            d.setdefault(section, {})[name] = value
        else:
            d[section] = value
    return d
