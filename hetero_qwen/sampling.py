"""Next-token sampling: penalties, temperature, top-k, top-p, min-p, seeded.

Penalties follow vLLM/SGLang semantics (what the model card's numbers assume):
presence_penalty subtracts a constant from every token already generated in this reply;
repetition_penalty divides positive / multiplies negative logits of tokens in prompt or reply.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0   # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0             # 0 = off
    min_p: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self):
        for name in ("temperature", "top_p", "min_p", "presence_penalty", "repetition_penalty"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
        if self.seed is not None and not 0 <= self.seed < 2**64:
            raise ValueError(f"seed must be in [0, 2**64), got {self.seed}")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0")
        if not 0 <= self.min_p <= 1:
            raise ValueError("min_p must be in [0, 1]")
        if self.repetition_penalty <= 0:
            raise ValueError("repetition_penalty must be > 0")

    def with_overrides(self, **kw) -> "SamplingParams":
        return replace(self, **{k: v for k, v in kw.items() if v is not None})

    def as_dict(self) -> dict:
        return asdict(self)


# The model card's recommended settings (Qwen3.6): thinking-general has no presence penalty (0.0);
# only the non-thinking (instruct) mode uses 1.5.
PRESETS = {
    "thinking-general": SamplingParams(temperature=1.0, top_p=0.95, top_k=20, min_p=0.0, presence_penalty=0.0),
    "thinking-coding": SamplingParams(temperature=0.6, top_p=0.95, top_k=20, min_p=0.0, presence_penalty=0.0),
    "instruct": SamplingParams(temperature=0.7, top_p=0.8, top_k=20, min_p=0.0, presence_penalty=1.5),
    "greedy": SamplingParams(),
}


class Sampler:
    """Stateful over one reply: remembers generated tokens for the penalties."""

    def __init__(self, params: SamplingParams, prompt_ids: list[int], vocab_size: int):
        self.p = params
        self.vocab_size = vocab_size
        self.generator = torch.Generator().manual_seed(params.seed if params.seed is not None
                                                       else int(torch.seed() % 2**63))
        self.seen = torch.zeros(vocab_size, dtype=torch.bool)       # prompt + reply
        self.generated = torch.zeros(vocab_size, dtype=torch.bool)  # reply only
        if prompt_ids:
            self.seen[torch.tensor(prompt_ids, dtype=torch.long).clamp_(0, vocab_size - 1)] = True

    def accept(self, token: int) -> None:
        self.seen[token] = True
        self.generated[token] = True

    def adjusted(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [vocab] -> a fp32 copy with the penalties applied (what greedy takes the argmax of)."""
        p = self.p
        logits = logits.float().clone()
        if p.repetition_penalty != 1.0:
            sel = logits[self.seen]
            logits[self.seen] = torch.where(sel > 0, sel / p.repetition_penalty, sel * p.repetition_penalty)
        if p.presence_penalty:
            logits[self.generated] -= p.presence_penalty
        return logits

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """The distribution a token is sampled from (temperature > 0): fp32 [vocab], sums to 1."""
        p = self.p
        logits = self.adjusted(logits) / p.temperature
        if p.top_k and p.top_k < logits.numel():
            kth = torch.topk(logits, p.top_k).values[-1]
            logits[logits < kth] = float("-inf")
        probs = torch.softmax(logits, dim=-1)
        if p.min_p > 0:
            probs[probs < p.min_p * probs.max()] = 0
        if p.top_p < 1.0:
            sorted_p, idx = probs.sort(descending=True)
            keep = sorted_p.cumsum(0) - sorted_p < p.top_p  # smallest prefix reaching top_p
            mask = torch.zeros_like(probs, dtype=torch.bool)
            mask[idx[keep]] = True
            probs = probs * mask
        return probs / probs.sum()

    @property
    def greedy(self) -> bool:
        return self.p.temperature == 0

    def __call__(self, logits: torch.Tensor) -> int:
        """logits [vocab] fp32 -> token id."""
        if self.greedy:
            return int(self.adjusted(logits).argmax())
        return int(torch.multinomial(self.probs(logits), 1, generator=self.generator))
