"""Chat pieces in-process: sampling defaults, transcripts, context limits, commands, reply display."""

import io
import json

import pytest
import torch

from hetero_qwen.chat.commands import SlashCommands
from hetero_qwen.chat.conversation import ChatSettings, ContextFull, Conversation
from hetero_qwen.chat.display import DIM, RESET, ReplyView
from hetero_qwen.chat.transcript import load_messages, save_messages
from hetero_qwen.errors import InputError
from hetero_qwen.sampling import PRESETS


@pytest.fixture(scope="module")
def engine(tiny_dir):
    from hetero_qwen.loader import load
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load(tiny_dir, quiet=True)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def small_engine(tiny_dir):
    from hetero_qwen.loader import load
    return load(tiny_dir, quiet=True, context=48)


def chat(conv, text):
    turn = conv.begin(text)
    list(turn)
    conv.end(turn)
    return turn


class Notes:
    def __init__(self):
        self.infos, self.errors = [], []

    def info(self, text):
        self.infos.append(text)

    def error(self, text):
        self.errors.append(text)


# ---- sampling ---------------------------------------------------------------------------------
def test_sampling_defaults_follow_the_mode_and_flags_override():
    assert ChatSettings(think=True).sampling() == PRESETS["thinking-general"]
    assert ChatSettings(think=False).sampling() == PRESETS["instruct"]
    assert ChatSettings(think=False).sampling().presence_penalty == 1.5
    s = ChatSettings(think=True, overrides={"temperature": 0.3})
    assert s.sampling().temperature == 0.3 and s.sampling().top_p == 0.95
    s.think = False
    assert s.sampling().temperature == 0.3 and s.sampling().top_p == 0.8
    assert ChatSettings(think=True, preset="greedy").sampling() == PRESETS["greedy"]
    with pytest.raises(InputError, match="unknown preset"):
        ChatSettings(preset="nope").sampling()


# ---- transcripts ------------------------------------------------------------------------------
def test_save_then_load_restores_the_conversation(engine, tmp_path):
    conv = Conversation(engine, ChatSettings(system="Be brief.", max_new_tokens=6, seed=0))
    chat(conv, "One?")
    conv.settings.think = False
    chat(conv, "Two?")
    path = save_messages(tmp_path / "chat.json", conv.history())
    assert [p.name for p in tmp_path.iterdir()] == ["chat.json"]  # no temporary file left behind
    saved = json.loads(path.read_text())
    assert [m["role"] for m in saved] == ["system", "user", "assistant", "user", "assistant"]
    assert "reasoning_content" not in saved[4]  # no thinking in the second reply

    other = Conversation(engine, ChatSettings(max_new_tokens=4, seed=1))
    other.replace(load_messages(path))
    assert other.history() == conv.history() and other.settings.system == "Be brief."
    turn = chat(other, "Three?")  # and it goes on from there
    assert turn.prompt_text.startswith("<|im_start|>system\nBe brief.<|im_end|>")


def test_load_accepts_a_request_body(engine, tmp_path):
    path = tmp_path / "body.json"
    path.write_text(json.dumps({"model": "x", "messages": [{"role": "user", "content": "hi"}]}))
    assert load_messages(path) == [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("text,message", [
    (None, "no such file"),
    ("{nope", "is not JSON"),
    ('{"a": 1}', "expected a JSON array"),
    ('[{"role": "robot", "content": "x"}]', "role 'robot'"),
    ('[{"role": "user", "content": "x"}, {"role": "system", "content": "y"}]', "only come first"),
    ('[{"role": "assistant", "content": 3}]', "content must be"),
])
def test_load_rejects_bad_files_in_one_line(tmp_path, text, message):
    path = tmp_path / "bad.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(InputError, match=message) as e:
        load_messages(path)
    assert "\n" not in str(e.value)


def test_load_rejects_what_the_template_rejects_and_keeps_the_conversation(engine, tmp_path):
    conv = Conversation(engine, ChatSettings(max_new_tokens=3, seed=0))
    chat(conv, "Keep me.")
    before = conv.history()
    path = tmp_path / "no_user.json"
    path.write_text('[{"role": "assistant", "content": "hello"}]')
    with pytest.raises(InputError, match="chat template"):
        conv.replace(load_messages(path))
    assert conv.history() == before


def test_save_into_a_missing_directory_is_one_line(tmp_path):
    with pytest.raises(InputError, match="directory .* does not exist"):
        save_messages(tmp_path / "missing" / "chat.json", [])


# ---- limits -----------------------------------------------------------------------------------
def test_outgrowing_the_context_is_a_message_not_a_crash(small_engine):
    conv = Conversation(small_engine, ChatSettings(think=False, ignore_eos=True, seed=0))
    with pytest.raises(ContextFull, match="/reset"):
        conv.begin("word " * 60)
    assert conv.messages == []
    turn = chat(conv, "Hi.")  # runs until the context is full
    assert turn.finish_reason == "context" and len(conv.cache.tokens) == small_engine.context
    with pytest.raises(ContextFull, match="larger --context"):
        conv.begin("More?")
    assert len(conv.messages) == 2
    conv.reset()
    conv.settings.max_new_tokens = 2
    assert chat(conv, "Again.").finish_reason == "length"


# ---- commands ---------------------------------------------------------------------------------
def test_commands(engine, tmp_path):
    conv = Conversation(engine, ChatSettings(max_new_tokens=3, seed=0))
    notes = Notes()
    commands = SlashCommands(conv, notes)
    assert commands.run("/think off") is False and conv.settings.think is False
    assert "instruct" in notes.infos[-1]
    commands.run("/think")  # a bare toggle
    assert conv.settings.think is True
    commands.run("/preserve on")
    assert conv.settings.preserve is True
    commands.run("/think maybe")
    assert notes.errors[-1] == "usage: /think on|off"
    commands.run("/system You are a pirate.")
    assert conv.settings.system == "You are a pirate."
    commands.run("/system off")
    assert conv.settings.system is None
    chat(conv, "Hello.")
    commands.run(f"/save {tmp_path / 'c.json'}")
    commands.run("/reset")
    assert conv.messages == []
    commands.run(f"/load {tmp_path / 'c.json'}")
    assert [m["role"] for m in conv.messages] == ["user", "assistant"]
    commands.run("/stats")
    assert "messages: 2 (1 replies)" in notes.infos[-1] and "snapshots:" in notes.infos[-1]
    commands.run("/load")
    assert notes.errors[-1] == "usage: /load FILE"
    commands.run("/frobnicate now")
    assert notes.errors[-1] == "unknown command /frobnicate; /help lists the commands"
    commands.run("/help")
    assert "/save FILE" in notes.infos[-1]
    assert commands.run("/exit") is True


# ---- display ----------------------------------------------------------------------------------
def shown(engine, tokens, **options):
    out = io.StringIO()
    tok = engine.tokenizer
    view = ReplyView(tok, out, stop_ids=frozenset({tok.im_end_id}), **options)
    for t in tokens:
        view.token(t)
    view.finish()
    return out.getvalue()


def test_reasoning_is_dim_or_hidden_and_tags_never_printed(engine):
    tok = engine.tokenizer
    reply = tok.encode("Hmm.\n</think>\n\nHello!") + [tok.im_end_id]
    assert shown(engine, reply, color=True, show_thinking=True, starts_in_think=True) == \
        f"{DIM}Hmm.\n{RESET}\nHello!\n"
    hidden = shown(engine, reply, color=True, show_thinking=False, starts_in_think=True)
    assert hidden.endswith("\r\x1b[KHello!\n") and "Hmm" not in hidden
    assert shown(engine, reply, color=False, show_thinking=False, starts_in_think=True) == "Hello!\n"
    assert shown(engine, reply, color=False, show_thinking=True, starts_in_think=True) == \
        "<think>\nHmm.\n</think>\nHello!\n"
    plain = tok.encode("Hi") + [tok.im_end_id]
    assert shown(engine, plain, color=True, show_thinking=True, starts_in_think=False) == "Hi\n"


def test_control_characters_cannot_reach_the_terminal(engine):
    tok = engine.tokenizer
    out = shown(engine, tok.encode("a\x1b[31mb\tc"), color=True, show_thinking=True, starts_in_think=False)
    assert "\x1b[31m" not in out and "\ufffd[31mb\tc" in out


def test_the_setup_summary_prints_a_plan_when_the_engine_has_one(engine):
    from hetero_qwen.commands.chat import summary_lines
    assert summary_lines(engine, "tiny", random_weights=False) == [
        f"hetero-qwen chat · tiny · float32 · context {engine.context} tokens", engine.plan_summary]
    assert engine.plan_summary.startswith("plan auto: cpu ")

    class Planned:
        runner, context = engine.runner, engine.context
        plan_summary = "plan: GPU 14.1 GiB, RAM 40.2 GiB, ~9 tok/s"

    lines = summary_lines(Planned(), "tiny", random_weights=True)
    assert lines[1] == "plan: GPU 14.1 GiB, RAM 40.2 GiB, ~9 tok/s" and "RANDOM weights" in lines[2]
