"""The engine: a loaded model's runner plus generate (prefill, then the one decode loop,
hetero_qwen.decode.Generation).

`Session` owns one sequence's caches and token history so callers (generate, chat, serve) can keep
the KV cache and DeltaNet state across calls and snapshot/restore them.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from .config import ModelConfig
from .context_limit import context_advice
from .decode import CONTEXT, Generation
from .errors import ContextLimitReached, InputError
from .executor.runner import Runner
from .kernels.dispatch import SMALL_BATCH
from .numerics import check_finite_logits
from .profile import Profile
from .sampling import Sampler, SamplingParams


@contextmanager
def torch_single_threaded():
    """Decode-sized forwards: torch's own ops (norms, small attention) run on one thread, so its
    spinning OpenMP workers never fight the C++ kernels' pool for the cores (measured: a 186M
    model decodes 29 -> 42 tok/s on 2 cores; a tiny one 8.5 -> 3.1 ms/token)."""
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@dataclass
class Stats:
    prompt_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_tokens: int = 0
    decode_seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prompt_tokens / self.prefill_seconds if self.prefill_seconds else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        return self.decode_tokens / self.decode_seconds if self.decode_seconds else 0.0

    def as_dict(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "prefill_seconds": round(self.prefill_seconds, 4),
                "prefill_tokens_per_s": round(self.prefill_tokens_per_s, 2),
                "decode_tokens": self.decode_tokens, "decode_seconds": round(self.decode_seconds, 4),
                "decode_tokens_per_s": round(self.decode_tokens_per_s, 2), **self.extra}


class Session:
    """One sequence: the tokens already in the caches and the caches themselves."""

    def __init__(self, engine: "Engine"):
        self.engine = engine
        self.caches = engine.runner.new_caches(1, engine.context)
        self.tokens: list[int] = []

    def close(self) -> None:
        """Give the caches' bytes back to their tiers (the caches are unusable afterwards)."""
        if self.caches:
            self.engine.runner.release_caches(self.caches)
            self.caches = []

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def reset(self) -> None:
        for c in self.caches:
            c.reset()
        self.tokens = []

    def snapshot(self) -> tuple[int, list]:
        return len(self.tokens), [c.snapshot() for c in self.caches]

    def restore(self, snap: tuple[int, list]) -> None:
        n, snaps = snap
        for c, s in zip(self.caches, snaps):
            c.restore(s)
        self.tokens = self.tokens[:n]

    @torch.inference_mode()
    def feed(self, ids: list[int], all_logits: bool = False) -> torch.Tensor:
        """Run `ids` after the cached tokens. Returns fp32 logits [len(ids), V] or [1, V] (last)."""
        self.engine.check_ids(ids, already=len(self.tokens))
        if len(ids) <= SMALL_BATCH:  # GEMVs: our CPU kernels' thread pool does the work
            with torch_single_threaded():
                return self._feed(ids, all_logits)
        return self._feed(ids, all_logits)

    def _feed(self, ids: list[int], all_logits: bool) -> torch.Tensor:
        runner = self.engine.runner
        outs = []
        step = self.engine.prefill_chunk
        for s in range(0, len(ids), step):
            chunk = ids[s:s + step]
            last = not all_logits
            if last and s + step < len(ids):
                runner.prefill_only(torch.tensor([chunk]), self.caches, len(self.tokens))  # no head needed
            else:
                outs.append(runner.forward(torch.tensor([chunk]), self.caches, len(self.tokens), last_only=last)[0])
            self.tokens.extend(chunk)
        return torch.cat(outs) if all_logits else outs[-1]


class Engine:
    def __init__(self, cfg: ModelConfig, runner: Runner, path: Path | None, context: int,
                 eos_ids: tuple[int, ...] = (), tokenizer=None, plan=None,
                 prefill_chunk: int = Profile.prefill_chunk):
        self.cfg, self.runner, self.path = cfg, runner, path
        self.context = context
        self.devices = runner.devices
        self.prefill_chunk = prefill_chunk  # tokens per prefill forward (the profile's prefill.chunk)
        self.eos_ids = tuple(eos_ids) or cfg.eos_token_ids
        self._tokenizer = tokenizer
        self.plan = plan
        self.stats = Stats()

    # ---- tokenizer ------------------------------------------------------------------------
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from .tokenizer import ChatTokenizer
            self._tokenizer = ChatTokenizer.from_dir(self.path)
        return self._tokenizer

    # ---- checks ---------------------------------------------------------------------------
    def check_ids(self, ids: list[int], already: int = 0) -> None:
        if not ids:
            raise InputError("the prompt is empty")
        bad = next((t for t in ids if not 0 <= t < self.cfg.vocab_size), None)
        if bad is not None:
            raise InputError(f"token id {bad} is out of range for vocab size {self.cfg.vocab_size}")
        if already + len(ids) > self.context:
            raise InputError(f"{already + len(ids)} tokens do not fit the context of {self.context} tokens "
                             f"({context_advice(self.context, self.cfg.max_position_embeddings)})")

    # ---- public API -----------------------------------------------------------------------
    def session(self) -> Session:
        return Session(self)

    def logits(self, ids: list[int]) -> torch.Tensor:
        """Prefill logits for every position: fp32 [len(ids), vocab]."""
        s = self.session()
        try:
            return s.feed(list(ids), all_logits=True)
        finally:
            s.close()

    @property
    def plan_summary(self) -> str:
        """One line: memory per tier and the predicted speed."""
        if self.plan is None:
            return ""
        from .units import fmt_bytes
        tiers = ", ".join(f"{name} {fmt_bytes(t.used_bytes)}/{fmt_bytes(t.budget_bytes)}"
                          for name, t in self.plan.tiers.items() if t.used_bytes or t.budget_bytes and name != "disk")
        p = self.plan.predicted
        sim = " (GPU simulated)" if self.devices.gpu is not None and self.devices.gpu.simulated else ""
        return (f"plan {self.plan.policy}: {tiers}{sim}; predicted decode {p.decode_tokens_per_s:.1f} tok/s, "
                f"prefill {p.prefill_tokens_per_s:.0f} tok/s")

    def memory_report(self) -> dict:
        """Measured resident and peak bytes per tier (what the executor charged)."""
        out = {name: {"used_bytes": m.used, "peak_bytes": m.peak, "budget_bytes": m.budget}
               for name, m in self.devices.tiers().items()}
        disk = self.runner.disk
        if disk is not None:
            out["disk"] = {"used_bytes": disk.used, "peak_bytes": disk.peak, "budget_bytes": None}
        return out

    def generate(self, ids: list[int], max_new_tokens: int = 256, temperature: float = 0.0,
                 top_p: float = 1.0, top_k: int = 0, min_p: float = 0.0, presence_penalty: float = 0.0,
                 repetition_penalty: float = 1.0, seed: int | None = None,
                 stop_ids: tuple[int, ...] | None = None, session: Session | None = None,
                 params: SamplingParams | None = None) -> Iterator[int]:
        """Stream new token ids. Stops after an eos/stop id (which is yielded) or max_new_tokens."""
        params = params or SamplingParams(temperature, top_p, top_k, min_p, presence_penalty,
                                          repetition_penalty, seed)
        return self._generate(list(ids), max_new_tokens, params,
                              tuple(stop_ids) if stop_ids is not None else self.eos_ids, session)

    def _generate(self, ids, max_new_tokens, params, stop, session) -> Iterator[int]:
        session = session or self.session()
        self.check_ids(ids, already=len(session.tokens))
        sampler = Sampler(params, session.tokens + ids, self.cfg.vocab_size)
        self.stats = stats = Stats(prompt_tokens=len(ids))
        traffic0 = self.devices.traffic.snapshot()
        busy0 = {name: d.busy_seconds for name, d in self._devs()}
        try:
            yield from self._loop(ids, max_new_tokens, stop, session, sampler, stats)
        finally:
            stats.extra.update(self.devices.traffic.since(traffic0).as_dict())
            stats.extra["seconds_by_device"] = {name: round(d.busy_seconds - busy0[name], 4) for name, d in self._devs()}
            stats.extra["peak_bytes"] = {k: v["peak_bytes"] for k, v in self.memory_report().items()}

    def _devs(self):
        return [(name, d) for name, d in (("gpu", self.devices.gpu), ("cpu", self.devices.cpu)) if d is not None]

    def _loop(self, ids, max_new_tokens, stop, session, sampler, stats):
        t0 = time.perf_counter()
        logits = session.feed(ids)[-1]
        stats.prefill_seconds = time.perf_counter() - t0
        gen = Generation(lambda t: session.feed(t)[-1], lambda: len(session.tokens), self.context,
                         logits, sampler, stop, max_new_tokens,
                         check_logits=lambda lg, n: check_finite_logits(lg, n, self, session.tokens))
        try:
            yield from gen
        finally:
            stats.decode_tokens, stats.decode_seconds = gen.decode_steps, gen.decode_seconds
        if gen.finish_reason == CONTEXT:
            raise ContextLimitReached(f"generation reached the context limit of {self.context} tokens "
                                      f"({context_advice(self.context, self.cfg.max_position_embeddings)})")
