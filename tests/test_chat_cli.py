"""`hetero-qwen chat` driven as a person would: in a pseudo-terminal (pexpect), and through a pipe."""

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest

from helpers import run_cli

ROOT = Path(__file__).resolve().parents[1]
DIM = "\x1b[2m"
STATS = r"\[\d+ prompt tokens at \d+ tok/s \(\d+ cached\) · \d+ generated at [\d.]+ tok/s\]"


@pytest.fixture
def env(tmp_path):
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HETERO_QWEN_HOME": str(tmp_path / "home"),
            "TERM": "xterm", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}


class Chat:
    """A `hetero-qwen chat` in a pseudo-terminal, with everything it printed kept for inspection."""

    def __init__(self, tiny_dir, env, *args):
        self.log = io.StringIO()
        self.child = pexpect.spawn(sys.executable, ["-m", "hetero_qwen", "chat", "--model", str(tiny_dir), *args],
                                   env=env, cwd=str(ROOT), encoding="utf-8", timeout=60, dimensions=(50, 200))
        self.child.logfile_read = self.log
        self.prompt()

    def prompt(self):
        self.child.expect_exact(">>> ")

    def command(self, line, reply):
        self.child.sendline(line)
        self.child.expect(reply)
        self.prompt()

    def message(self, text):
        """Send a message, wait for its reply to end: the text printed before the stats line."""
        self.child.sendline(text)
        self.child.expect(re.escape(DIM) + STATS)
        reply = self.child.before
        self.prompt()
        return reply

    def transcript(self):
        return self.log.getvalue()


def saved(path):
    return json.loads(Path(path).read_text())


def test_a_session_in_a_terminal(tiny_dir, env, tmp_path):
    chat = Chat(tiny_dir, env, "--max-new-tokens", "12", "--seed", "0")
    assert "hetero-qwen chat · tiny · float32 · context" in chat.transcript()
    assert "thinking on · sampling thinking-general (temperature 1, top_p 0.95, top_k 20" in chat.transcript()

    first = chat.message("Hello there")
    assert first.split("Hello there", 1)[1].strip(), "the reply printed nothing"
    assert DIM in first  # thinking is on: the reasoning streams dim

    chat.command("/think off", "thinking off · sampling instruct")
    second = chat.message("Now answer without thinking")
    assert DIM not in second.split("without thinking", 1)[1]

    chat.child.sendline("first line \\")
    chat.child.expect_exact("... ")
    chat.child.sendline("second line")
    chat.child.expect(STATS)
    chat.prompt()
    chat.child.sendline('"""')
    chat.child.sendline("block one")
    chat.child.sendline("block two")
    chat.child.sendline('"""')
    chat.child.expect(STATS)
    chat.prompt()

    chat.command(f"/save {tmp_path / 'a.json'}", "saved 8 messages")
    messages = saved(tmp_path / "a.json")
    assert [m["role"] for m in messages] == ["user", "assistant"] * 4
    assert [m["content"] for m in messages[::2]] == [
        "Hello there", "Now answer without thinking", "first line \nsecond line", "block one\nblock two"]
    assert all("reasoning_content" not in m for m in messages[3::2])  # replies after /think off

    chat.command("/reset", "new conversation")
    chat.command("/stats", r"messages: 0 \(0 replies\)")
    chat.command(f"/load {tmp_path / 'a.json'}", "loaded 8 messages")
    chat.command(f"/save {tmp_path / 'b.json'}", "saved 8 messages")
    assert saved(tmp_path / "b.json") == messages
    chat.message("And one more")  # the loaded conversation goes on

    chat.command("/frobnicate", "unknown command /frobnicate; /help lists the commands")
    chat.command("/load /no/such/file.json", "error: no such file: /no/such/file.json")
    chat.child.sendline("/exit")
    chat.child.expect(pexpect.EOF)
    chat.child.close()
    assert chat.child.exitstatus == 0
    assert "Traceback" not in chat.transcript()


def test_ctrl_c_stops_a_reply_and_keeps_the_session(tiny_dir, env, tmp_path):
    chat = Chat(tiny_dir, env, "--max-new-tokens", "100000", "--ignore-eos", "--seed", "1")
    for n, text in enumerate(["Tell me a very long story", "Go on"]):
        chat.child.sendline(text)
        chat.child.expect_exact(DIM)  # the reasoning started streaming...
        chat.child.expect(r"(?s).{40}")  # ...and goes on: stop it part-way
        chat.child.sendintr()
        chat.child.expect_exact("[stopped]")
        chat.child.expect(STATS)
        chat.prompt()
        chat.command("/stats", rf"messages: {2 * n + 2} \({n + 1} replies\)")

    chat.child.sendintr()  # at the prompt, Ctrl-C does not leave
    chat.child.expect_exact("(Ctrl-C: type /exit or press Ctrl-D to leave)")
    chat.prompt()
    chat.command(f"/save {tmp_path / 'c.json'}", "saved 4 messages")
    messages = saved(tmp_path / "c.json")
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert all(m.get("reasoning_content") for m in messages[1::2])  # the partial replies were kept

    chat.child.sendeof()
    chat.child.expect(pexpect.EOF)
    chat.child.close()
    assert chat.child.exitstatus == 0
    assert "Traceback" not in chat.transcript()


def test_a_pipe_gets_plain_replies(tiny_dir, env, tmp_path):
    lines = ["word " * 80, "hello", "", "/think on", "second", f"/save {tmp_path / 'p.json'}"]
    result = subprocess.run(
        [sys.executable, "-m", "hetero_qwen", "chat", "--model", str(tiny_dir), "--no-think", "--context", "96",
         "--max-new-tokens", "6", "--seed", "2"],
        input="\n".join(lines) + "\n", capture_output=True, text=True, env=env, cwd=str(ROOT), timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "\x1b" not in result.stdout
    # The overlong first line is refused with advice; the chat goes on.
    assert re.search(r"error: the conversation is \d+ tokens, more than the context of 96: /reset", result.stderr)
    messages = saved(tmp_path / "p.json")
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert [m["content"] for m in messages[::2]] == ["hello", "second"]
    # stdout: each reply's answer on its own line, no reasoning (thinking was on for the second).
    assert result.stdout == "".join(m["content"].lstrip("\n") + "\n" for m in messages[1::2])
    assert "thinking on" in result.stderr


def test_without_model_the_tiny_model_says_it_is_random(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("HETERO_QWEN_HOME", str(tmp_path))
    monkeypatch.setattr(sys, "stdin", io.StringIO("hi\n"))
    code, out, err = run_cli(["chat", "--max-new-tokens", "2", "--hide-thinking"], capsys)
    assert code == 0
    assert "RANDOM weights" in err


def test_bad_options_fail_before_loading(capsys):
    code, out, err = run_cli(["chat", "--preset", "wild", "--model", "/nonexistent"], capsys)
    assert code == 2 and err.strip() == "error: unknown preset 'wild'; choose one of thinking-general, " \
                                        "thinking-coding, instruct, greedy"
