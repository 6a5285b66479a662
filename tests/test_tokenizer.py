"""The tiny tokenizer, ChatTokenizer (encode, decode, render, streaming) and reply parsing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from hetero_qwen.chat_template import our_chat_template
from hetero_qwen.errors import CheckpointError, InputError
from hetero_qwen.replies import ends_inside_think, parse_tool_calls, split_reasoning
from hetero_qwen.special_tokens import QWEN_FIRST_SPECIAL_ID, QWEN_SPECIAL_TOKENS
from hetero_qwen.tiny_tokenizer import (
    TINY_VOCAB_SIZE,
    build_tiny_tokenizer,
    tiny_eos_token_ids,
    tiny_special_token_ids,
    write_tiny_tokenizer,
)
from hetero_qwen.tokenizer import ChatTokenizer

REAL_SPECIAL_TOKENS = Path(__file__).resolve().parents[2] / "shared/reference/qwen3.6-27b/special_tokens.json"

UNICODE_TEXT = "naïve café — 😀 👩‍👩‍👧 世界 Ελληνικά q\u0301 \t\n  end"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tiny")
    write_tiny_tokenizer(directory)
    return directory


@pytest.fixture(scope="module")
def chat(tiny_dir) -> ChatTokenizer:
    return ChatTokenizer.from_dir(tiny_dir)


def copy_of(tiny_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "ckpt"
    shutil.copytree(tiny_dir, target)
    return target


# --- the tiny tokenizer files ---------------------------------------------------------------------


def test_tiny_tokenizer_is_deterministic(tmp_path):
    write_tiny_tokenizer(tmp_path / "a")
    write_tiny_tokenizer(tmp_path / "b")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


@pytest.mark.parametrize("vocab_size", [300, TINY_VOCAB_SIZE, 1024])
def test_special_tokens_fill_the_end_of_the_vocab_in_qwen_order(vocab_size):
    tokenizer = build_tiny_tokenizer(vocab_size)
    assert tokenizer.get_vocab_size(with_added_tokens=True) == vocab_size
    ids = tiny_special_token_ids(vocab_size)
    assert list(ids) == [text for text, _ in QWEN_SPECIAL_TOKENS]
    assert list(ids.values()) == list(range(vocab_size - len(QWEN_SPECIAL_TOKENS), vocab_size))
    for text, token_id in ids.items():
        assert tokenizer.token_to_id(text) == token_id
        assert tokenizer.encode(text).ids == [token_id]
    assert tiny_eos_token_ids(vocab_size) == [ids["<|im_end|>"], ids["<|endoftext|>"]]


def test_vocab_size_limits():
    with pytest.raises(ValueError, match="too small"):
        build_tiny_tokenizer(256 + len(QWEN_SPECIAL_TOKENS) - 1)
    with pytest.raises(ValueError, match="vocab_size can be at most"):
        build_tiny_tokenizer(100_000)


@pytest.mark.skipif(not REAL_SPECIAL_TOKENS.is_file(), reason=f"{REAL_SPECIAL_TOKENS} not found")
def test_special_token_order_matches_the_real_checkpoint():
    real = {k: v for k, v in json.loads(REAL_SPECIAL_TOKENS.read_text()).items() if not k.startswith("_")}
    ours = {text: QWEN_FIRST_SPECIAL_ID + i for i, (text, _) in enumerate(QWEN_SPECIAL_TOKENS)}
    assert ours == real


def test_ordinary_english_compresses():
    tokenizer = build_tiny_tokenizer()
    text = "The assistant thinks about the question and then answers the user with a short answer."
    assert len(tokenizer.encode(text).ids) < 0.6 * len(text.encode())


def test_autotokenizer_loads_offline_with_the_qwen35_pipeline(tiny_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_dir))
    assert len(tokenizer) == TINY_VOCAB_SIZE
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.chat_template == our_chat_template()
    # Qwen3.5's regex keeps a letter with its combining mark (Qwen2's splits them), digits go one by one.
    pieces = [piece for piece, _ in tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str("aq\u0301b 123")]
    assert pieces[0] == "aqÌģb" and pieces[-3:] == ["1", "2", "3"]
    ids = tokenizer.encode(UNICODE_TEXT, add_special_tokens=False)
    assert tokenizer.decode(ids) == UNICODE_TEXT


@pytest.mark.parametrize("model_type", ["qwen3_5", "qwen3_5_text"])
def test_same_ids_beside_a_model_config(tiny_dir, tmp_path, model_type, chat):
    # With config.json present transformers may pick Qwen3_5Tokenizer, which rebuilds the pipeline in
    # Python; the tiny checkpoint must tokenize the same either way.
    directory = copy_of(tiny_dir, tmp_path)
    config = {"model_type": model_type, "architectures": ["Qwen3_5ForCausalLM"]}
    (directory / "config.json").write_text(json.dumps(config))
    beside_config = ChatTokenizer.from_dir(directory)
    text = UNICODE_TEXT + "<|im_start|>user\n<think>x</think><tool_call>"
    assert beside_config.encode(text) == chat.encode(text)
    assert beside_config.vocab_size == TINY_VOCAB_SIZE and beside_config.eos_ids == chat.eos_ids


# --- ChatTokenizer ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "hello world", UNICODE_TEXT, "a" * 300, "  leading and trailing  \n"])
def test_encode_decode_round_trip(chat, text):
    assert chat.decode(chat.encode(text)) == text


def test_special_tokens_encode_to_single_ids(chat):
    ids = tiny_special_token_ids()
    assert (chat.im_start_id, chat.im_end_id) == (ids["<|im_start|>"], ids["<|im_end|>"])
    assert (chat.think_id, chat.end_think_id) == (ids["<think>"], ids["</think>"])
    text = "<|im_start|>user\nhi<|im_end|>\n<think>x</think><tool_call>"
    encoded = chat.encode(text)
    for token in ("<|im_start|>", "<|im_end|>", "<think>", "</think>", "<tool_call>"):
        assert encoded.count(ids[token]) == 1
    assert chat.decode(encoded) == text
    assert chat.decode(encoded, skip_special_tokens=True) == "user\nhi\n<think>x</think><tool_call>"


def test_eos_ids_default_to_im_end_and_endoftext(chat):
    assert chat.eos_ids == tiny_eos_token_ids()
    assert chat.template_source == "checkpoint"


def test_eos_ids_from_generation_config_come_first(tiny_dir, tmp_path):
    directory = copy_of(tiny_dir, tmp_path)
    (directory / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 488]}))
    assert ChatTokenizer.from_dir(directory).eos_ids[:2] == [7, 488]
    assert set(tiny_eos_token_ids()) <= set(ChatTokenizer.from_dir(directory).eos_ids)


def test_render_and_encode_chat(chat):
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]
    thinking = chat.render(messages)
    assert thinking == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n<think>\n"
    )
    assert chat.render(messages, enable_thinking=False).endswith("<think>\n\n</think>\n\n")
    assert not chat.render(messages, add_generation_prompt=False).endswith("assistant\n<think>\n")
    assert chat.encode_chat(messages) == chat.encode(thinking)
    assert chat.encode_chat(messages)[:1] == [chat.im_start_id]


def test_render_passes_preserve_thinking_and_tools(chat):
    messages = [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1", "reasoning_content": "R1"},
        {"role": "user", "content": "Q2"},
    ]
    assert "R1" not in chat.render(messages)
    assert "<think>\nR1\n</think>\n\nA1" in chat.render(messages, preserve_thinking=True)
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {}}}
    assert '"name": "lookup"' in chat.render(messages, tools=[tool])


def test_render_accepts_json_string_arguments(chat):
    def conversation(arguments):
        call = {"type": "function", "function": {"name": "f", "arguments": arguments}}
        return [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "", "tool_calls": [call]}]

    as_dict = chat.render(conversation({"x": 1, "y": "z"}))
    assert chat.render(conversation('{"x": 1, "y": "z"}')) == as_dict
    assert "<parameter=x>\n1\n</parameter>" in as_dict
    with pytest.raises(InputError, match="not JSON"):
        chat.render(conversation("{x: 1"))


def test_render_rejects_a_conversation_without_a_user_turn(chat):
    with pytest.raises(InputError, match="No user query"):
        chat.render([{"role": "assistant", "content": "hi"}])


def test_template_from_chat_template_file_or_ours(tiny_dir, tmp_path):
    directory = copy_of(tiny_dir, tmp_path)
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    del config["chat_template"]
    config_path.write_text(json.dumps(config))
    fallback = ChatTokenizer.from_dir(directory)
    assert fallback.template_source == "hetero-qwen" and fallback.hf.chat_template == our_chat_template()

    (directory / "chat_template.jinja").write_text("{%- for m in messages %}[{{ m.content }}]{% endfor %}")
    own = ChatTokenizer.from_dir(directory)
    assert own.template_source == "checkpoint"
    assert own.render([{"role": "user", "content": "hi"}]) == "[hi]"


# --- streaming -------------------------------------------------------------------------------------


def test_stream_decoder_never_shows_a_broken_character(chat):
    ids = chat.encode(UNICODE_TEXT)
    stream = chat.stream_decoder()
    deltas = [stream.feed(token_id) for token_id in ids]
    assert "".join(deltas) + stream.finish() == UNICODE_TEXT
    assert all("\ufffd" not in delta for delta in deltas)
    assert deltas.count("") >= 3  # the emoji and CJK bytes really were split across tokens


def test_stream_decoder_flushes_an_unfinished_character(chat):
    emoji_ids = chat.encode("😀")
    assert len(emoji_ids) > 1
    stream = chat.stream_decoder()
    assert stream.feed(chat.encode("ok")[0]) == "o"
    assert [stream.feed(i) for i in chat.encode("k") + emoji_ids[:-1]] == ["k"] + [""] * (len(emoji_ids) - 1)
    assert "\ufffd" in stream.finish()
    assert stream.finish() == ""


def test_stream_decoder_keeps_special_tokens_unless_asked(chat):
    ids = chat.encode("<think>\nhm\n</think>\n\nhi<|im_end|>")
    kept = chat.stream_decoder()
    assert "".join(kept.feed(i) for i in ids) == "<think>\nhm\n</think>\n\nhi<|im_end|>"
    skipped = chat.stream_decoder(skip_special_tokens=True)
    assert "".join(skipped.feed(i) for i in ids) == "<think>\nhm\n</think>\n\nhi"


# --- broken checkpoints ----------------------------------------------------------------------------


def one_line_error(directory) -> str:
    with pytest.raises(CheckpointError) as caught:
        ChatTokenizer.from_dir(directory)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_missing_directory_or_files(tmp_path):
    assert "not found" in one_line_error(tmp_path / "nope")
    assert "no tokenizer" in one_line_error(tmp_path)


def test_corrupt_tokenizer_json(tiny_dir, tmp_path):
    directory = copy_of(tiny_dir, tmp_path)
    (directory / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": [')
    assert "cannot load the tokenizer" in one_line_error(directory)


def test_tokenizer_without_chat_tokens(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    plain = Tokenizer(models.BPE(vocab={chr(c): c - 97 for c in range(97, 123)}, merges=[]))
    plain.pre_tokenizer = pre_tokenizers.Whitespace()
    plain.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    assert "<|im_start|>" in one_line_error(tmp_path)


def test_bad_generation_config(tiny_dir, tmp_path):
    directory = copy_of(tiny_dir, tmp_path)
    (directory / "generation_config.json").write_text("[1, 2")
    assert "generation_config.json" in one_line_error(directory)


# --- reply parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply, started_in_think, expected",
    [
        ("Let me see.\n</think>\n\nIt is 4.", True, ("Let me see.", "It is 4.")),
        ("<think>\nplan\n</think>\n\nanswer", True, ("plan", "answer")),
        ("<think>\nplan\n</think>\n\nanswer", False, ("plan", "answer")),
        ("Just the answer.", False, ("", "Just the answer.")),
        ("still thinking about", True, ("still thinking about", "")),
        ("<think>\nhalf a thought", False, ("half a thought", "")),
        ("\n</think>\n\nempty reasoning", True, ("", "empty reasoning")),
        ("a</think>b</think>c", True, ("a", "b</think>c")),
    ],
)
def test_split_reasoning(reply, started_in_think, expected):
    assert split_reasoning(reply, started_in_think=started_in_think) == expected


def test_prompt_tells_whether_the_reply_starts_in_thinking(chat):
    messages = [{"role": "user", "content": "Q"}]
    assert ends_inside_think(chat.render(messages))
    assert not ends_inside_think(chat.render(messages, enable_thinking=False))
    assert chat.split_reasoning("answer", started_in_think=False) == ("", "answer")


def test_parse_tool_calls():
    content = (
        "I will check.\n\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
        "<parameter=days>\n3\n</parameter>\n<parameter=opts>\n{\"metric\": true}\n</parameter>\n"
        "<parameter=note>\ntwo\nlines\n</parameter>\n</function>\n</tool_call>\n"
        "<tool_call>\n<function=search>\n</function>\n</tool_call>"
    )
    text, calls = parse_tool_calls(content)
    assert text == "I will check."
    assert calls == [
        {
            "name": "get_weather",
            "arguments": {"city": "Paris", "days": 3, "opts": {"metric": True}, "note": "two\nlines"},
        },
        {"name": "search", "arguments": {}},
    ]


def test_parse_tool_calls_leaves_unfinished_calls_and_plain_text():
    assert parse_tool_calls("no calls here") == ("no calls here", [])
    unfinished = "<tool_call>\n<function=f>\n<parameter=a>\n1"
    assert parse_tool_calls(unfinished) == (unfinished, [])


def test_tool_calls_round_trip_through_the_template(chat):
    arguments = {"city": "Zürich", "zip": "8001", "days": 2, "ok": False, "none": None, "list": [1, "a"], "s": "x y"}
    tools = [
        {
            "type": "function",
            "function": {"name": "w", "parameters": {"type": "object", "properties": {"zip": {"type": "string"}}}},
        }
    ]
    messages = [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "Sure.", "tool_calls": [{"function": {"name": "w", "arguments": arguments}}]},
    ]
    rendered = chat.render(messages, tools=tools, add_generation_prompt=False)
    reply = rendered.rsplit("<|im_start|>assistant\n", 1)[1].removesuffix("<|im_end|>\n")
    reasoning, content = split_reasoning(reply)
    assert reasoning == ""
    assert parse_tool_calls(content, tools) == ("Sure.", [{"name": "w", "arguments": arguments}])
    assert parse_tool_calls(content)[1][0]["arguments"]["zip"] == 8001  # without the schema, JSON wins
