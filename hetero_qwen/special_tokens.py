"""The Qwen3.5/3.6 special tokens, in vocabulary order.

The real checkpoints number them from 248044 (`<|endoftext|>`) to 248069 (`</think>`) with no gaps;
the tiny tokenizer keeps the same order at the end of its small vocabulary. The `special` flag follows
the Qwen tokenizer configs: the ChatML and vision markers are special, the tool, FIM and think markers
are ordinary added tokens (so `skip_special_tokens=True` never drops `<think>` or `<tool_call>`).
"""

from __future__ import annotations

QWEN_FIRST_SPECIAL_ID = 248044

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
TOOL_CALL = "<tool_call>"
END_TOOL_CALL = "</tool_call>"
TOOL_RESPONSE = "<tool_response>"
END_TOOL_RESPONSE = "</tool_response>"
THINK = "<think>"
END_THINK = "</think>"

# (text, special) in id order.
QWEN_SPECIAL_TOKENS: tuple[tuple[str, bool], ...] = (
    (ENDOFTEXT, True),
    (IM_START, True),
    (IM_END, True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    (TOOL_CALL, False),
    (END_TOOL_CALL, False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    (TOOL_RESPONSE, False),
    (END_TOOL_RESPONSE, False),
    (THINK, False),
    (END_THINK, False),
)

# A reply ends at either of these (Qwen's generation_config lists both).
EOS_TOKENS = (IM_END, ENDOFTEXT)
