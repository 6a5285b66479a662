"""A validated request -> the prompt to run: token ids, snapshot marks, sampling, limits.

Built on the request's side (before it queues), so a template error or a prompt longer than the
context is a 400 at once. Sampling: the model card's preset for the mode (thinking-general with
thinking, instruct without), then the server's command-line flags, then the request's fields.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from ..chat.prompt_cache import common_prefix, next_divergence
from ..errors import InputError
from ..replies import ends_inside_think
from ..sampling import PRESETS, SamplingParams
from .errors import bad_request
from .schema import GenerationRequest

THINKING_PRESET, INSTRUCT_PRESET = "thinking-general", "instruct"


@dataclass
class ServeDefaults:
    """What a request does not say: set from the `serve` command line."""
    think: bool = True
    preset: str | None = None                        # None: by mode, as the model card says
    overrides: dict = field(default_factory=dict)    # sampling flags given on the command line
    max_tokens: int | None = None                    # None: until an end token or the context is full


@dataclass
class Prompt:
    request: GenerationRequest
    text: str
    ids: list[int]
    marks: list[int]                  # snapshot here: the system prompt's end, where the next turn diverges
    params: SamplingParams
    max_new_tokens: int
    started_in_think: bool            # the prompt left <think> open: the reply starts as reasoning
    forced_now: str = ""              # reply text already in the prompt (tool_choice, thinking off)
    forced_after_think: str = ""      # reply text to insert once the reasoning ends (thinking on)
    parse_tools: bool = False
    resume_at: int = 0                # the next turn of this conversation reuses at least this much


class PromptBuilder:
    def __init__(self, tokenizer, context: int, defaults: ServeDefaults, lock=None):
        self.tokenizer, self.context, self.defaults = tokenizer, context, defaults
        self.lock = lock or threading.Lock()

    def build(self, req: GenerationRequest) -> Prompt:
        with self.lock:
            return self._build(req)

    def _build(self, req: GenerationRequest) -> Prompt:
        think = self.defaults.think if req.think is None else req.think
        params = self._sampling(req, think)
        if req.kind == "completion":
            return self._finish(req, req.prompt, [], params, started_in_think=False, param="prompt")
        tools = req.tools if req.tool_choice != "none" else None
        render = lambda messages, gen: self.tokenizer.render(  # noqa: E731
            messages, enable_thinking=think, preserve_thinking=req.preserve, tools=tools, add_generation_prompt=gen)
        try:
            text = render(req.messages, True)
        except InputError as e:
            raise bad_request(str(e), "messages") from None
        forced = _forced_call(req)
        forced_now = forced if forced and not ends_inside_think(text) else ""
        ids = self.tokenizer.encode(text + forced_now)
        mark = next_divergence(lambda m: render(m, False), self.tokenizer.encode, req.messages, ids, think)
        marks = [mark] + self._system_end(req.messages, tools, render, ids)
        prompt = self._finish(req, text + forced_now, marks, params, ends_inside_think(text), "messages", ids)
        prompt.resume_at = min(mark, len(ids))
        prompt.forced_now = forced_now
        prompt.forced_after_think = "\n\n" + forced if forced and not forced_now else ""  # as the template writes it
        prompt.parse_tools = tools is not None
        return prompt

    def _system_end(self, messages, tools, render, ids) -> list[int]:
        """Where the system turn (system prompt, tool list) ends: a snapshot there lets a new
        conversation with the same system prompt skip it. None when there is no system turn."""
        head = [m for m in messages[:1] if m["role"] == "system"]
        if not head and not tools:
            return []
        try:
            text = render(head + [{"role": "user", "content": ""}], False)
        except InputError:
            return []
        return [common_prefix(ids, self.tokenizer.encode(text))]

    def _sampling(self, req: GenerationRequest, think: bool) -> SamplingParams:
        name = self.defaults.preset or (THINKING_PRESET if think else INSTRUCT_PRESET)
        try:
            params = PRESETS[name].with_overrides(**self.defaults.overrides)
            return params.with_overrides(**req.sampling, seed=req.seed)
        except ValueError as e:
            field_name = next((k for k in req.sampling if str(e).startswith(k)), None)
            raise bad_request(str(e), field_name) from None

    def _finish(self, req, text, marks, params, started_in_think, param, ids=None) -> Prompt:
        ids = self.tokenizer.encode(text) if ids is None else ids
        if not ids:
            raise bad_request("the prompt is empty", param)
        if len(ids) >= self.context:
            raise bad_request(f"the prompt is {len(ids)} tokens but the context is {self.context} tokens "
                              f"(the prompt and at least one reply token must fit)", param)
        room = self.context - len(ids)
        limit = req.max_tokens or self.defaults.max_tokens
        return Prompt(req, text, ids, marks, params, min(limit, room) if limit else room, started_in_think,
                      resume_at=len(ids))


def _forced_call(req: GenerationRequest) -> str:
    """The start of the reply that tool_choice "required" or a named function dictates."""
    if req.tool_choice == "function":
        return f"<tool_call>\n<function={req.tool_name}>\n"
    if req.tool_choice == "required":
        return "<tool_call>\n<function="
    return ""
