"""Request bodies -> validated `GenerationRequest`s. Every field is either used or refused.

Fields we cannot honour (n > 1, logit_bias, logprobs, ...) are a 400 naming the field, and so is a
field we do not know: a client must never believe a setting took effect when it did not. A field
set to its neutral value (n: 1, logprobs: false, frequency_penalty: 0) is accepted. Message content
is text only: image or file parts are refused, so nothing in a request makes the server read a file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .errors import bad_request, unsupported

SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "min_p", "presence_penalty", "repetition_penalty")
TEMPLATE_KEYS = ("enable_thinking", "preserve_thinking")
MAX_STOPS = 16

# Accepted only at their neutral value: field -> test that the value is neutral.
_NEUTRAL = {
    "n": lambda v: v == 1,
    "logprobs": lambda v: v is False or v == 0,
    "top_logprobs": lambda v: v == 0,
    "logit_bias": lambda v: v == {},
    "frequency_penalty": lambda v: v == 0,
    "parallel_tool_calls": lambda v: v is True,
    "response_format": lambda v: isinstance(v, dict) and v.get("type") == "text" and len(v) == 1,
    "echo": lambda v: v is False,
    "best_of": lambda v: v == 1,
    "suffix": lambda v: v == "",
}
_METADATA = ("user", "metadata", "store")  # about the caller, not the generation: accepted, unused

CHAT_FIELDS = ("model", "messages", "max_tokens", "max_completion_tokens", *SAMPLING_FIELDS, "seed", "stop",
               "stream", "stream_options", "tools", "tool_choice", "chat_template_kwargs", *TEMPLATE_KEYS)
COMPLETION_FIELDS = ("model", "prompt", "max_tokens", *SAMPLING_FIELDS, "seed", "stop", "stream", "stream_options")
COMPLETION_DEFAULT_MAX_TOKENS = 16  # the OpenAI API's default for /v1/completions


@dataclass
class GenerationRequest:
    kind: str                                  # "chat" | "completion"
    model: str | None = None
    messages: list[dict] | None = None         # chat: system/user/assistant/tool messages, text content
    prompt: str | None = None                  # completion: raw text, no template
    tools: list[dict] | None = None
    tool_choice: str = "auto"                  # auto | none | required | function
    tool_name: str | None = None               # the named function when tool_choice is "function"
    think: bool | None = None                  # None: the server's default
    preserve: bool = False
    sampling: dict = field(default_factory=dict)  # only the fields the request set
    seed: int | None = None
    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False


def parse_chat(body: Any) -> GenerationRequest:
    body = _object(body)
    _check_fields(body, CHAT_FIELDS)
    req = GenerationRequest(kind="chat")
    _common(body, req)
    req.messages = _messages(body.get("messages"))
    for key in ("max_completion_tokens", "max_tokens"):  # the newer name wins
        if body.get(key) is not None:
            req.max_tokens = _pos_int(body[key], key)
            break
    kwargs = body.get("chat_template_kwargs")
    if kwargs is not None:
        if not isinstance(kwargs, dict):
            raise bad_request("`chat_template_kwargs` must be an object", "chat_template_kwargs")
        for key in kwargs:
            if key not in TEMPLATE_KEYS:
                raise unsupported(f"chat_template_kwargs.{key}", f" (known: {', '.join(TEMPLATE_KEYS)})")
    settings = {k: body[k] for k in TEMPLATE_KEYS if body.get(k) is not None}
    settings.update({k: v for k, v in (kwargs or {}).items() if v is not None})
    for key, value in settings.items():
        if not isinstance(value, bool):
            raise bad_request(f"`{key}` must be true or false", key)
    req.think = settings.get("enable_thinking")
    req.preserve = settings.get("preserve_thinking", False)
    req.tools = _tools(body.get("tools"))
    _tool_choice(body.get("tool_choice"), req)
    return req


def parse_completion(body: Any) -> GenerationRequest:
    body = _object(body)
    _check_fields(body, COMPLETION_FIELDS)
    req = GenerationRequest(kind="completion")
    _common(body, req)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise bad_request("`prompt` must be a non-empty string (one prompt per request)", "prompt")
    req.prompt = prompt
    req.max_tokens = (_pos_int(body["max_tokens"], "max_tokens") if body.get("max_tokens") is not None
                      else COMPLETION_DEFAULT_MAX_TOKENS)
    return req


# ---- pieces ------------------------------------------------------------------------------------
def _object(body: Any) -> dict:
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    return body


def _check_fields(body: dict, known: tuple[str, ...]) -> None:
    for key, value in body.items():
        if key in known or key in _METADATA or value is None:
            continue
        if key in _NEUTRAL:
            if not _NEUTRAL[key](value):
                raise unsupported(key, f" (only {key} at its default is accepted)")
            continue
        raise unsupported(key)


def _common(body: dict, req: GenerationRequest) -> None:
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad_request("`model` must be a string", "model")
    req.model = model
    for key in SAMPLING_FIELDS:
        if body.get(key) is not None:
            req.sampling[key] = _number(body[key], key, integer=key == "top_k")
    if req.sampling.get("top_k") == -1:  # vLLM's spelling of "off"
        req.sampling["top_k"] = 0
    if body.get("seed") is not None:
        seed = body["seed"]
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise bad_request("`seed` must be an integer", "seed")
        req.seed = seed % 2**63
    req.stop = _stops(body.get("stop"))
    req.stream = _bool(body.get("stream", False), "stream")
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise bad_request("`stream_options` must be an object", "stream_options")
        for key in options:
            if key != "include_usage":
                raise unsupported(f"stream_options.{key}")
        if not req.stream:
            raise bad_request("`stream_options` is only allowed with `stream: true`", "stream_options")
        req.include_usage = _bool(options.get("include_usage", False), "stream_options.include_usage")


def _number(value: Any, key: str, integer: bool = False) -> float | int:
    ok = not isinstance(value, bool) and isinstance(value, int if integer else (int, float))
    if not ok or (isinstance(value, float) and not math.isfinite(value)):
        raise bad_request(f"`{key}` must be {'an integer' if integer else 'a number'}", key)
    return value


def _pos_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise bad_request(f"`{key}` must be a positive integer", key)
    return value


def _bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise bad_request(f"`{key}` must be true or false", key)
    return value


def _stops(value: Any) -> list[str]:
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise bad_request("`stop` must be a non-empty string or a list of them", "stop")
    if len(stops) > MAX_STOPS:
        raise bad_request(f"`stop` has {len(stops)} strings; at most {MAX_STOPS}", "stop")
    return list(stops)


def _messages(value: Any) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise bad_request("`messages` must be a non-empty list", "messages")
    return [_message(m, f"messages[{i}]") for i, m in enumerate(value)]


def _message(m: Any, where: str) -> dict:
    if not isinstance(m, dict):
        raise bad_request(f"`{where}` must be an object", where)
    role = m.get("role")
    if role == "developer":  # the newer name of the system role
        role = "system"
    if role not in ("system", "user", "assistant", "tool"):
        raise bad_request(f"`{where}.role` must be system, developer, user, assistant or tool", f"{where}.role")
    out: dict[str, Any] = {"role": role, "content": _content(m.get("content"), f"{where}.content",
                                                             optional=role == "assistant")}
    if role == "assistant":
        reasoning = m.get("reasoning_content", m.get("reasoning"))  # clients send either name
        if reasoning is not None:
            if not isinstance(reasoning, str):
                raise bad_request(f"`{where}.reasoning_content` must be a string", f"{where}.reasoning_content")
            out["reasoning_content"] = reasoning
        if m.get("tool_calls"):
            out["tool_calls"] = _tool_calls(m["tool_calls"], f"{where}.tool_calls")
    return out


def _content(value: Any, where: str, optional: bool = False) -> str:
    if value is None and optional:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for j, part in enumerate(value):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text" or not isinstance(part.get("text"), str):
                raise bad_request(f"`{where}[{j}]`: only text parts are supported (got type {kind!r})",
                                  f"{where}[{j}].type")
            texts.append(part["text"])
        return "".join(texts)  # the template joins parts without a separator too
    raise bad_request(f"`{where}` must be a string or a list of text parts", where)


def _tool_calls(calls: Any, where: str) -> list[dict]:
    if not isinstance(calls, list):
        raise bad_request(f"`{where}` must be a list", where)
    out = []
    for i, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise bad_request(f"`{where}[{i}].function.name` is missing", f"{where}[{i}].function.name")
        arguments = fn.get("arguments", "{}")
        if not isinstance(arguments, (str, dict)):
            raise bad_request(f"`{where}[{i}].function.arguments` must be a JSON string",
                              f"{where}[{i}].function.arguments")
        out.append({"type": "function", "id": call.get("id"),
                    "function": {"name": fn["name"], "arguments": arguments}})
    return out


def _tools(value: Any) -> list[dict] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise bad_request("`tools` must be a list", "tools")
    tools = []
    for i, tool in enumerate(value):
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            raise bad_request(f"`tools[{i}]` must be a function tool", f"tools[{i}].type")
        fn = tool.get("function")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise bad_request(f"`tools[{i}].function.name` is missing", f"tools[{i}].function.name")
        if fn.get("parameters") is not None and not isinstance(fn["parameters"], dict):
            raise bad_request(f"`tools[{i}].function.parameters` must be a JSON schema object",
                              f"tools[{i}].function.parameters")
        tools.append({"type": "function", "function": fn})
    return tools or None


def _tool_choice(value: Any, req: GenerationRequest) -> None:
    if value is None:
        req.tool_choice = "auto"
    elif value in ("auto", "none", "required"):
        req.tool_choice = value
    elif isinstance(value, dict) and isinstance(value.get("function"), dict) and \
            isinstance(value["function"].get("name"), str):
        req.tool_choice, req.tool_name = "function", value["function"]["name"]
    else:
        raise bad_request("`tool_choice` must be auto, none, required or {\"type\": \"function\", "
                          "\"function\": {\"name\": ...}}", "tool_choice")
    if req.tool_choice in ("required", "function") and not req.tools:
        raise bad_request(f"`tool_choice` {req.tool_choice!r} needs `tools`", "tool_choice")
    if req.tool_name is not None and req.tool_name not in [t["function"]["name"] for t in req.tools]:
        raise bad_request(f"`tool_choice` names {req.tool_name!r}, which is not in `tools`", "tool_choice")
