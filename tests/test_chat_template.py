"""Our chat template must render exactly what Qwen3.6's template renders.

Every conversation below is rendered through transformers' `apply_chat_template(tokenize=False)`
(the same Jinja environment a real checkpoint gets) with our template and with the reconstructed
reference, under every combination of enable_thinking / preserve_thinking / add_generation_prompt,
and the texts must be identical. The reference lives beside the clone in ../shared/ and the
comparison is skipped when it is absent; the golden test at the end runs everywhere.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from jinja2 import TemplateError

from hetero_qwen.chat_template import our_chat_template
from hetero_qwen.tiny_tokenizer import write_tiny_tokenizer

REFERENCE = (
    Path(__file__).resolve().parents[2] / "shared" / "reference" / "qwen3.6-27b" / "chat_template.reconstructed.jinja"
)
needs_reference = pytest.mark.skipif(
    not REFERENCE.is_file(), reason=f"reference template not found at {REFERENCE} (shared/ is not beside the clone)"
)

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city — °C or °F",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}
SEARCH_TOOL = {"type": "function", "function": {"name": "search", "parameters": {"type": "object", "properties": {}}}}

ODD_ARGUMENTS = {
    "city": "Zürich",
    "days": 3,
    "ratio": 0.5,
    "metric": True,
    "unit": None,
    "tags": ["a", 1, False],
    "nested": {"k": [1, {"x": "ü"}]},
    "text": "two\nlines",
    "number_as_text": "42",
}

CONVERSATIONS = {
    "single_user": [{"role": "user", "content": "Hello!"}],
    "system_and_user": [
        {"role": "system", "content": "  You are terse.\n"},
        {"role": "user", "content": "  Say hi.  \n"},
    ],
    "empty_system": [{"role": "system", "content": ""}, {"role": "user", "content": "Hi"}],
    "multi_turn_inline_think": [
        {"role": "system", "content": "Be helpful."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "<think>\nAdd them.\n</think>\n\n4"},
        {"role": "user", "content": "And 3+3?"},
        {"role": "assistant", "content": "<think>\n\nEasy.\n\n</think>\n\n6"},
        {"role": "user", "content": "Thanks"},
    ],
    "multi_turn_plain_history": [
        {"role": "user", "content": "One"},
        {"role": "assistant", "content": "Two"},
        {"role": "user", "content": "Three"},
    ],
    "reasoning_content_field": [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1", "reasoning_content": "  first thought \n"},
        {"role": "user", "content": "Q2"},
        {"role": "assistant", "content": "A2", "reasoning_content": ""},
    ],
    "reasoning_field_and_inline_think": [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "<think>inline</think>answer", "reasoning_content": "field wins"},
    ],
    "think_without_open_tag": [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "only closing\n</think>\n\nanswer"},
        {"role": "user", "content": "Q again"},
    ],
    "trailing_assistant_after_query": [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "<think>\nwhy\n</think>\n\nbecause"},
    ],
    "tool_call_then_results": [
        {"role": "system", "content": "Use tools when needed."},
        {"role": "user", "content": "Weather in Zürich and Paris?"},
        {
            "role": "assistant",
            "content": "",
            "reasoning_content": "Two cities, two calls.",
            "tool_calls": [
                {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Zürich", "days": 2}}},
                {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
            ],
        },
        {"role": "tool", "content": '{"temp": 21}'},
        {"role": "tool", "content": "  cloudy  "},
        {"role": "assistant", "content": "Zürich 21°, Paris cloudy."},
        {"role": "user", "content": "Thanks!"},
    ],
    "agent_loop_in_progress": [
        {"role": "user", "content": "Find it."},
        {"role": "assistant", "content": "Searching first.", "tool_calls": [{"name": "search", "arguments": {}}]},
        {"role": "tool", "content": "nothing"},
        {
            "role": "assistant",
            "content": "<think>\nTry the weather tool.\n</think>\n\n",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": ODD_ARGUMENTS}}],
        },
        {"role": "tool", "content": "sunny"},
    ],
    "tool_call_without_arguments_key": [
        {"role": "user", "content": "Go"},
        {"role": "assistant", "content": "ok", "tool_calls": [{"function": {"name": "search"}}]},
        {"role": "tool", "content": "done"},
    ],
    "legacy_tool_response_as_user": [
        {"role": "user", "content": "Real question"},
        {"role": "assistant", "content": "<think>\nx\n</think>\n\ncalling"},
        {"role": "user", "content": "<tool_response>\nresult\n</tool_response>"},
    ],
    "list_content_parts": [
        {"role": "system", "content": [{"type": "text", "text": "Sys part."}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Look: "},
                {"type": "image", "image": "x.png"},
                {"type": "video", "video": "y.mp4"},
                {"type": "image_url", "image_url": {"url": "z"}},
            ],
        },
    ],
    "none_content_is_dropped": [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "search", "arguments": {"q": 1}}}]},
        {"role": "tool", "content": "r"},
    ],
    "tool_message_first_quirk": [
        {"role": "tool", "content": "orphan result"},
        {"role": "user", "content": "Q"},
    ],
    "unicode_and_markup_in_text": [
        {"role": "user", "content": "emoji 😀👩‍👩‍👧, CJK 世界, <b>html</b> & \"quotes\""},
        {"role": "assistant", "content": "<think>ß</think>ok 👍"},
        {"role": "user", "content": "again"},
    ],
}

TOOL_SETS = {"no_tools": None, "two_tools": [WEATHER_TOOL, SEARCH_TOOL]}

OPTIONS = [
    {"enable_thinking": thinking, "preserve_thinking": preserve, "add_generation_prompt": prompt}
    for thinking, preserve, prompt in itertools.product([True, False], [False, True], [True, False])
]

BAD_CONVERSATIONS = {
    "no_user_query": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}],
    "only_tool_responses": [{"role": "user", "content": "<tool_response>\nr\n</tool_response>"}],
    "system_not_first": [{"role": "user", "content": "q"}, {"role": "system", "content": "s"}],
    "unknown_role": [{"role": "user", "content": "q"}, {"role": "narrator", "content": "n"}],
    "image_in_system": [{"role": "system", "content": [{"type": "image"}]}, {"role": "user", "content": "q"}],
}


@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    directory = tmp_path_factory.mktemp("tiny_tokenizer")
    write_tiny_tokenizer(directory)
    return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)


def render(tokenizer, template: str, messages, tools=None, **options) -> str:
    return tokenizer.apply_chat_template(messages, tools=tools, chat_template=template, tokenize=False, **options)


@needs_reference
@pytest.mark.parametrize("tools_name", list(TOOL_SETS))
@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_renders_like_the_reference(hf_tokenizer, name, tools_name):
    reference = REFERENCE.read_text(encoding="utf-8")
    ours = our_chat_template()
    for options in OPTIONS:
        expected = render(hf_tokenizer, reference, CONVERSATIONS[name], TOOL_SETS[tools_name], **options)
        got = render(hf_tokenizer, ours, CONVERSATIONS[name], TOOL_SETS[tools_name], **options)
        assert got == expected, f"{name} / {tools_name} / {options}"


@needs_reference
@pytest.mark.parametrize("vision_id", [False, True])
def test_vision_ids_like_the_reference(hf_tokenizer, vision_id):
    messages = CONVERSATIONS["list_content_parts"] + [
        {"role": "assistant", "content": "seen"},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "and this"}]},
    ]
    reference, ours = REFERENCE.read_text(encoding="utf-8"), our_chat_template()
    expected = render(hf_tokenizer, reference, messages, add_generation_prompt=True, add_vision_id=vision_id)
    assert render(hf_tokenizer, ours, messages, add_generation_prompt=True, add_vision_id=vision_id) == expected


@needs_reference
@pytest.mark.parametrize("name", list(BAD_CONVERSATIONS))
def test_rejects_what_the_reference_rejects(hf_tokenizer, name):
    messages = BAD_CONVERSATIONS[name]
    errors = []
    for template in (REFERENCE.read_text(encoding="utf-8"), our_chat_template()):
        with pytest.raises(TemplateError) as caught:
            render(hf_tokenizer, template, messages, add_generation_prompt=True)
        errors.append(str(caught.value))
    assert errors[0] == errors[1]


def test_tiny_tokenizer_carries_our_template(hf_tokenizer):
    assert hf_tokenizer.chat_template == our_chat_template()


GOLDEN_MESSAGES = [
    {"role": "system", "content": "Sys"},
    {"role": "user", "content": "Q1"},
    {"role": "assistant", "content": "<think>\nold\n</think>\n\nA1"},
    {"role": "user", "content": "Q2"},
    {
        "role": "assistant",
        "content": "Calling.",
        "reasoning_content": "new",
        "tool_calls": [{"function": {"name": "f", "arguments": {"s": "x", "n": 1, "b": False}}}],
    },
    {"role": "tool", "content": "r1"},
    {"role": "tool", "content": "r2"},
]

GOLDEN_TEXT = (
    "<|im_start|>system\nSys<|im_end|>\n"
    "<|im_start|>user\nQ1<|im_end|>\n"
    "<|im_start|>assistant\nA1<|im_end|>\n"
    "<|im_start|>user\nQ2<|im_end|>\n"
    "<|im_start|>assistant\n<think>\nnew\n</think>\n\nCalling.\n\n"
    "<tool_call>\n<function=f>\n<parameter=s>\nx\n</parameter>\n<parameter=n>\n1\n</parameter>\n"
    "<parameter=b>\nfalse\n</parameter>\n</function>\n</tool_call><|im_end|>\n"
    "<|im_start|>user\n<tool_response>\nr1\n</tool_response>\n<tool_response>\nr2\n</tool_response><|im_end|>\n"
)


@pytest.mark.parametrize(
    "options, ending",
    [
        ({"add_generation_prompt": True}, "<|im_start|>assistant\n<think>\n"),
        ({"add_generation_prompt": True, "enable_thinking": False}, "<|im_start|>assistant\n<think>\n\n</think>\n\n"),
        ({"add_generation_prompt": False}, ""),
    ],
)
def test_golden_rendering(hf_tokenizer, options, ending):
    assert render(hf_tokenizer, our_chat_template(), GOLDEN_MESSAGES, **options) == GOLDEN_TEXT + ending


def test_golden_preserve_thinking_keeps_old_reasoning(hf_tokenizer):
    text = render(hf_tokenizer, our_chat_template(), GOLDEN_MESSAGES, preserve_thinking=True)
    assert "<|im_start|>assistant\n<think>\nold\n</think>\n\nA1<|im_end|>" in text
    assert text.replace("<think>\nold\n</think>\n\n", "") == GOLDEN_TEXT
