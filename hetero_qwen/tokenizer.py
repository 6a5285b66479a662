"""A checkpoint's tokenizer and chat template, through transformers.

`ChatTokenizer.from_dir(path)` loads the checkpoint's own tokenizer.json and chat template (from
tokenizer_config.json or chat_template.jinja); only a checkpoint that has neither gets our template.
Rendering goes through `apply_chat_template(tokenize=False)`, so the prompt text is exactly what
transformers would build, and `enable_thinking` / `preserve_thinking` reach the template as given.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .chat_template import our_chat_template
from .errors import CheckpointError, InputError
from .replies import ends_inside_think, parse_tool_calls, split_reasoning
from .special_tokens import END_THINK, ENDOFTEXT, IM_END, IM_START, THINK

__all__ = ["ChatTokenizer", "StreamDecoder", "ends_inside_think", "parse_tool_calls", "split_reasoning"]

TOKENIZER_FILES = ("tokenizer.json", "vocab.json")


class ChatTokenizer:
    """Encode, decode and render chats for one checkpoint."""

    def __init__(self, tokenizer: Any, eos_ids: Sequence[int] = (), template_source: str = "checkpoint"):
        self.hf = tokenizer
        self.template_source = template_source  # "checkpoint" or "hetero-qwen" (our fallback)
        self.im_start_id = self._single_id(IM_START)
        self.im_end_id = self._single_id(IM_END)
        self.think_id = self._single_id(THINK)
        self.end_think_id = self._single_id(END_THINK)
        stops = list(eos_ids) + [tokenizer.eos_token_id, self.im_end_id, self._single_id(ENDOFTEXT)]
        self.eos_ids: list[int] = list(dict.fromkeys(i for i in stops if i is not None))

    @classmethod
    def from_dir(cls, path: str | os.PathLike) -> ChatTokenizer:
        directory = Path(path)
        if not directory.is_dir():
            raise CheckpointError(f"checkpoint directory not found: {directory}")
        if not any((directory / name).is_file() for name in TOKENIZER_FILES):
            raise CheckpointError(f"no tokenizer in {directory}: expected tokenizer.json")
        from transformers import AutoTokenizer  # heavy import, only when a tokenizer is needed

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        except Exception as error:  # transformers raises many kinds; the user needs one line
            detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise CheckpointError(f"cannot load the tokenizer in {directory}: {detail}") from None
        source = "checkpoint"
        if not tokenizer.chat_template:
            template_file = directory / "chat_template.jinja"
            if template_file.is_file():
                tokenizer.chat_template = template_file.read_text(encoding="utf-8")
            else:
                tokenizer.chat_template = our_chat_template()
                source = "hetero-qwen"
        eos_ids = _generation_eos_ids(directory)
        try:
            return cls(tokenizer, eos_ids, source)
        except CheckpointError as error:
            raise CheckpointError(f"{directory}: {error}") from None

    # Reply parsing lives in replies.py; reachable from here too since callers hold a ChatTokenizer.
    split_reasoning = staticmethod(split_reasoning)
    parse_tool_calls = staticmethod(parse_tool_calls)
    ends_inside_think = staticmethod(ends_inside_think)

    def _single_id(self, token: str) -> int:
        ids = self.hf.encode(token, add_special_tokens=False)
        if len(ids) != 1:
            raise CheckpointError(f"the tokenizer has no single token for {token}")
        return ids[0]

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special-token text (e.g. `<|im_start|>`) becomes its single id."""
        return list(self.hf.encode(text, add_special_tokens=False))

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False)

    def render(
        self,
        messages: Sequence[dict],
        *,
        enable_thinking: bool = True,
        preserve_thinking: bool = False,
        tools: Sequence[dict] | None = None,
        add_generation_prompt: bool = True,
    ) -> str:
        """The prompt text for `messages`, rendered by the chat template.

        A conversation the template rejects (no user turn, a misplaced system message, ...) raises
        InputError with the template's own message.
        """
        from jinja2 import TemplateError

        try:
            return self.hf.apply_chat_template(
                _arguments_as_dicts(messages),
                tools=list(tools) if tools else None,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
                enable_thinking=enable_thinking,
                preserve_thinking=preserve_thinking,
            )
        except TemplateError as error:
            raise InputError(f"chat template: {error}") from None

    def encode_chat(self, messages: Sequence[dict], **render_options: Any) -> list[int]:
        """Token ids of `render(messages, **render_options)`."""
        return self.encode(self.render(messages, **render_options))

    def stream_decoder(self, skip_special_tokens: bool = False) -> StreamDecoder:
        return StreamDecoder(self, skip_special_tokens=skip_special_tokens)


class StreamDecoder:
    """Turns token ids, fed one at a time, into printable text deltas.

    A character can span several byte-level tokens; while the decoded tail is an incomplete UTF-8
    sequence (it ends in U+FFFD) nothing is emitted, so the printed stream never shows a broken
    character. Only the ids since the last emitted boundary are re-decoded, so each step is cheap.
    """

    def __init__(self, tokenizer: ChatTokenizer, skip_special_tokens: bool = False):
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self._ids: list[int] = []
        self._prefix = 0  # ids before this are fully emitted and never decoded again
        self._read = 0  # ids[_prefix:_read] decode to text already emitted

    def _text(self, start: int, end: int) -> str:
        return self._tokenizer.decode(self._ids[start:end], skip_special_tokens=self._skip)

    def feed(self, token_id: int) -> str:
        """Add one id; return the new printable text (possibly empty)."""
        self._ids.append(int(token_id))
        emitted = self._text(self._prefix, self._read)
        current = self._text(self._prefix, len(self._ids))
        if current.endswith("\ufffd") or len(current) <= len(emitted):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return current[len(emitted) :]

    def finish(self) -> str:
        """Whatever is still held back (an incomplete character decodes to U+FFFD here)."""
        emitted = self._text(self._prefix, self._read)
        current = self._text(self._prefix, len(self._ids))
        self._prefix = self._read = len(self._ids)
        return current[len(emitted) :]


def _arguments_as_dicts(messages: Sequence[dict]) -> list[dict]:
    """Copy of `messages` with JSON-string tool-call arguments (OpenAI style) decoded to dicts,
    since the template iterates `arguments | items`."""
    fixed = []
    for message in messages:
        calls = message.get("tool_calls")
        if calls:
            message = {**message, "tool_calls": [_decode_call_arguments(call) for call in calls]}
        fixed.append(message)
    return fixed


def _decode_call_arguments(call: dict) -> dict:
    if isinstance(call.get("function"), dict):
        return {**call, "function": _decode_call_arguments(call["function"])}
    arguments = call.get("arguments")
    if isinstance(arguments, str):
        try:
            decoded = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            raise InputError(f"tool call arguments are not JSON: {arguments[:60]!r}") from None
        return {**call, "arguments": decoded}
    return call


def _generation_eos_ids(directory: Path) -> list[int]:
    """eos_token_id from generation_config.json (an int or a list), or none."""
    path = directory / "generation_config.json"
    if not path.is_file():
        return []
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
    except (json.JSONDecodeError, AttributeError):
        raise CheckpointError(f"generation_config.json is not a JSON object: {path}") from None
    if value is None:
        return []
    return [int(v) for v in (value if isinstance(value, list) else [value])]
