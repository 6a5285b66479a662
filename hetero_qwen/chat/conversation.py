"""A conversation: its messages, its settings, and the turns that extend it. No terminal code.

Every turn renders the whole history through the chat template and hands the ids to a
`PromptCache`, which feeds only what the caches do not already hold. The conversation marks where
the *next* turn's rendering will likely part from this one (e.g. older reasoning is dropped unless
preserve_thinking is on), so that a snapshot is waiting exactly there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from ..decode import Generation, SpeculativeGeneration
from ..errors import InputError
from ..numerics import check_finite_logits
from ..replies import ends_inside_think, split_reasoning
from ..sampling import PRESETS, Sampler, SamplingParams
from .prompt_cache import PromptCache, SyncStats, next_divergence

if TYPE_CHECKING:
    from ..engine import Engine

THINKING_PRESET, INSTRUCT_PRESET = "thinking-general", "instruct"  # the model card's defaults per mode


class ContextFull(InputError):
    """The conversation no longer fits the context."""


CONTEXT_ADVICE = "/reset to start over (/save FILE first to keep it), or restart with a larger --context"


def context_full_message(tokens: int, context: int) -> str:
    return f"the conversation is {tokens} tokens, more than the context of {context}: {CONTEXT_ADVICE}"


@dataclass
class ChatSettings:
    think: bool = True              # enable_thinking
    preserve: bool = False          # preserve_thinking: keep older replies' reasoning in the prompt
    system: str | None = None
    preset: str | None = None       # None: thinking-general when thinking, instruct otherwise
    overrides: dict = field(default_factory=dict)  # sampling flags given on the command line
    max_new_tokens: int | None = None  # None: until an end token or the context is full
    ignore_eos: bool = False        # keep generating past end tokens (for tests and benchmarks)
    seed: int | None = None
    image_min_pixels: int | None = None  # image pixel budget (None: the processor's)
    image_max_pixels: int | None = None
    mtp: bool | None = None         # speculative decoding with the MTP layer (None: when the checkpoint has one)
    draft_tokens: int | None = None  # drafts per step (None: the engine's default)

    def preset_name(self) -> str:
        return self.preset or (THINKING_PRESET if self.think else INSTRUCT_PRESET)

    def sampling(self) -> SamplingParams:
        if self.preset_name() not in PRESETS:
            raise InputError(f"unknown preset {self.preset_name()!r}; choose one of {', '.join(PRESETS)}")
        try:
            return PRESETS[self.preset_name()].with_overrides(**self.overrides)
        except ValueError as e:
            raise InputError(str(e)) from None


class Turn:
    """One reply being generated: the one decode loop (hetero_qwen.decode.Generation) over the
    conversation's caches. Iterate it for token ids; stop early by simply not iterating on.

    `finish_reason` is "stop" (an end token), "length" (max_new_tokens), "context" (the context is
    full) or "interrupted" (the caller stopped iterating). The last token yielded is never fed to the
    caches (the next turn's sync feeds it if the rendered history keeps it).
    """

    def __init__(self, conversation: "Conversation", prompt_text: str, prompt_ids: list[int],
                 logits: torch.Tensor, sync: SyncStats, params: SamplingParams, stop_ids: frozenset[int]):
        self.conversation = conversation
        self.prompt_text, self.prompt_ids = prompt_text, prompt_ids
        self.sync = sync
        self.params = params
        self.starts_in_think = ends_inside_think(prompt_text)
        self.image_tokens: list[int] = []  # placeholder tokens of each image this message attached
        sampler = Sampler(params, prompt_ids, conversation.engine.cfg.vocab_size)
        sampler.generator = conversation.generator  # one seeded stream for the whole chat
        cache, settings, engine = conversation.cache, conversation.settings, conversation.engine
        args = (cache.feed, lambda: len(cache.tokens), engine.context, logits,
                sampler, stop_ids, settings.max_new_tokens)
        check = dict(check_logits=lambda lg, n: check_finite_logits(lg, n, engine, cache.tokens))
        k = engine.speculation(settings.mtp, settings.draft_tokens)
        self.generation = (SpeculativeGeneration(*args, spec=cache.session, draft_tokens=k, **check) if k
                           else Generation(*args, **check))

    @property
    def logits(self) -> torch.Tensor:
        """fp32 [V] after the prompt: what the first reply token is sampled from."""
        return self.generation.logits

    @property
    def sampler(self) -> Sampler:
        return self.generation.sampler

    @sampler.setter
    def sampler(self, sampler) -> None:  # tests script the reply
        self.generation.sampler = sampler

    @property
    def stop_ids(self) -> frozenset[int]:
        return self.generation.stop_ids

    @property
    def tokens(self) -> list[int]:
        return self.generation.tokens

    @property
    def finish_reason(self) -> str:
        return self.generation.finish_reason

    @property
    def decode_steps(self) -> int:
        return self.generation.decode_steps

    @property
    def decode_seconds(self) -> float:
        return self.generation.decode_seconds

    @property
    def decode_tokens_per_s(self) -> float:
        return self.generation.decode_tokens_per_s

    def __iter__(self) -> Iterator[int]:
        return iter(self.generation)

    def reply_text(self) -> str:
        ids = self.tokens[:-1] if self.finish_reason == "stop" else self.tokens
        return self.conversation.tokenizer.decode(ids)

    def message(self) -> dict:
        """The reply as an OpenAI-style assistant message (reasoning_content when there was thinking)."""
        reasoning, content = split_reasoning(self.reply_text(), started_in_think=self.starts_in_think)
        message = {"role": "assistant", "content": content}
        if reasoning:
            message["reasoning_content"] = reasoning
        return message


class Conversation:
    def __init__(self, engine: "Engine", settings: ChatSettings | None = None):
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.settings = settings or ChatSettings()
        self.messages: list[dict] = []  # everything but the system message (settings.system)
        self.cache = PromptCache(engine.session())
        self.generator = torch.Generator()
        self.generator.manual_seed(self.settings.seed if self.settings.seed is not None
                                   else int(torch.seed() % 2**63))
        self.last_turn: Turn | None = None
        self.decoded_total = 0
        from .images import ChatImages
        self.images = ChatImages(engine, self.settings.image_min_pixels, self.settings.image_max_pixels)

    # ---- history ---------------------------------------------------------------------------
    def history(self, messages: list[dict] | None = None) -> list[dict]:
        """The messages as the template sees them: the system message first when there is one."""
        return _with_system(self.settings.system, self.messages if messages is None else messages)

    def reset(self) -> None:
        """Forget the messages (the system prompt stays); the caches are reused where they still match."""
        self.messages = []

    def replace(self, messages: list[dict]) -> None:
        """Take over a saved conversation: a leading system message becomes the system prompt."""
        messages = list(messages)
        system = None
        if messages and messages[0].get("role") == "system":
            system = messages.pop(0).get("content") or None
        if messages:  # the template checks what we cannot: roles in order, a user query present
            self.render(_with_system(system, messages), add_generation_prompt=True)
        self.settings.system = system
        self.messages = messages

    def render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        return self.tokenizer.render(messages, enable_thinking=self.settings.think,
                                     preserve_thinking=self.settings.preserve,
                                     add_generation_prompt=add_generation_prompt)

    # ---- turns -----------------------------------------------------------------------------
    def begin(self, text: str, should_stop: Callable[[], bool] | None = None) -> Turn:
        """Add a user message and prefill up to the reply. The message joins the history only
        if this succeeds (raises ContextFull, prompt_cache.Interrupted, InputError)."""
        params = self.settings.sampling()
        attached = list(self.images.pending)
        messages = self.messages + [{"role": "user", "content": self.images.content(text)}]
        prompt = self.render(self.history(messages), add_generation_prompt=True)
        ids, images, _ = self.images.prompt(self.history(messages), self.tokenizer.encode(prompt))
        if len(ids) >= self.engine.context:
            raise ContextFull(context_full_message(len(ids), self.engine.context)
                              + (" (images take many tokens: --image-max-pixels lowers that)" if images else ""))
        logits = self.cache.sync(ids, marks=[self._next_divergence(messages, ids)], should_stop=should_stop,
                                 images=images)
        self.messages = messages
        self.images.pending = []
        stops = frozenset() if self.settings.ignore_eos else frozenset([*self.engine.eos_ids, *self.tokenizer.eos_ids])
        turn = Turn(self, prompt, ids, logits, self.cache.last, params, stops)
        turn.image_tokens = [c for p in attached for c in p.token_counts]
        self.last_turn = turn
        return turn

    def end(self, turn: Turn) -> dict:
        """Record the reply (whole or partial) in the history."""
        message = turn.message()
        self.messages.append(message)
        self.decoded_total += len(turn.tokens)
        return message

    def _next_divergence(self, messages: list[dict], ids: list[int]) -> int:
        """Where the next turn's prompt will likely first differ from `ids`."""
        widen = self.images.expander(self.history(messages))
        return next_divergence(lambda m: self.render(m, add_generation_prompt=False),
                               lambda text: widen(self.tokenizer.encode(text)),
                               self.history(messages), ids, self.settings.think)


def _with_system(system: str | None, messages: list[dict]) -> list[dict]:
    return ([{"role": "system", "content": system}] if system else []) + list(messages)
