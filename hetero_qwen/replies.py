"""Reading a generated reply: its reasoning, its content, and the tool calls in it.

The Qwen3.6 format: reasoning sits in `<think>...</think>` before the answer, and a tool call is
`<tool_call>\\n<function=NAME>\\n<parameter=KEY>\\nVALUE\\n</parameter>\\n</function>\\n</tool_call>`
after any text. These are the inverses of what the chat template writes for an assistant turn.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from .special_tokens import END_THINK, THINK

_TOOL_CALL_RE = re.compile(r"<tool_call>\s*<function=([^>\n]+)>(.*?)</function>\s*</tool_call>", re.DOTALL)
_PARAMETER_RE = re.compile(r"<parameter=([^>\n]+)>(.*?)</parameter>", re.DOTALL)


def ends_inside_think(prompt: str) -> bool:
    """Whether the reply to `prompt` starts inside a reasoning block (the prompt's last `<think>` is open)."""
    return prompt.rfind(THINK) > prompt.rfind(END_THINK)


def split_reasoning(text: str, *, started_in_think: bool = True) -> tuple[str, str]:
    """Split a reply into (reasoning, content).

    `started_in_think` says whether the prompt already opened `<think>` (Qwen3.6's generation prompt
    with thinking on ends in `<think>\\n`, so the reply holds only the closing `</think>`); with
    thinking off the prompt carries an empty closed block and the whole reply is content. A reply
    that opens its own `<think>` is handled either way. With no `</think>` yet the model is still
    thinking: everything is reasoning and the content is empty.
    """
    body = text.lstrip()
    inside = started_in_think
    if body.startswith(THINK):
        body, inside = body[len(THINK) :], True
    if not inside:
        return "", text
    reasoning, closed, rest = body.partition(END_THINK)
    if not closed:
        return reasoning.strip(), ""
    return reasoning.strip(), rest.lstrip("\n")


def parse_tool_calls(content: str, tools: Sequence[dict] | None = None) -> tuple[str, list[dict[str, Any]]]:
    """Take the complete `<tool_call>` blocks out of `content`: (remaining text, calls).

    Each call is `{"name": ..., "arguments": {...}}`. A value is JSON-decoded when it parses
    (`3` -> 3, `true` -> True, `[1]` -> [1]) and kept as text otherwise; when `tools` is given, a
    parameter its schema types as "string" is always kept as text. An unfinished call (no
    `</tool_call>` yet) stays in the text.
    """
    string_params = _string_parameters(tools or ())
    calls = []
    for match in _TOOL_CALL_RE.finditer(content):
        name = match.group(1).strip()
        arguments = {}
        for param in _PARAMETER_RE.finditer(match.group(2)):
            key = param.group(1).strip()
            raw = _strip_one_newline(param.group(2))
            arguments[key] = raw if (name, key) in string_params else _json_or_text(raw)
        calls.append({"name": name, "arguments": arguments})
    return _TOOL_CALL_RE.sub("", content).strip(), calls


def _strip_one_newline(value: str) -> str:
    # The template writes "<parameter=K>\n" + value + "\n</parameter>"; only those newlines are markup.
    value = value[1:] if value.startswith("\n") else value
    return value[:-1] if value.endswith("\n") else value


def _json_or_text(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _string_parameters(tools: Sequence[dict]) -> set[tuple[str, str]]:
    """(function name, parameter) pairs whose JSON schema type is "string"."""
    pairs = set()
    for tool in tools:
        function = tool.get("function", tool)
        properties = (function.get("parameters") or {}).get("properties") or {}
        for key, schema in properties.items():
            if isinstance(schema, dict) and schema.get("type") == "string":
                pairs.add((function.get("name"), key))
    return pairs
