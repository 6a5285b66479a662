"""The engine: a loaded model's runner plus generate (prefill, then the one decode loop,
hetero_qwen.decode.Generation).

`Session` owns one sequence's caches and token history so callers (generate, chat, serve) can keep
the KV cache and DeltaNet state across calls and snapshot/restore them.
"""

from __future__ import annotations

import contextlib
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from .config import ModelConfig
from .context_limit import context_advice
from .decode import CONTEXT, Generation, SpeculativeGeneration
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


DEFAULT_DRAFT_TOKENS = 2


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

    def __init__(self, engine: "Engine", mtp: bool = True):
        """`mtp` False: a session that never drafts, so its tokens skip the MTP layer."""
        self.engine = engine
        self.caches = engine.runner.new_caches(1, engine.context)
        self.tokens: list[int] = []
        self.rope_delta = 0   # next rotary position - token count (> 0 after an image: M-RoPE)
        self.image_keys: list[tuple[int, str]] = []  # (token index, digest) of each image fed
        self.mtp = None  # speculative.MtpState when the engine has an MTP layer: fed with every token
        self._verified = None  # (start, ids, hidden) of the last verify forward, until commit
        if engine.mtp is not None and mtp:
            from .speculative import MtpState
            self.mtp = MtpState(engine.mtp, engine.context)

    def close(self) -> None:
        """Give the caches' bytes back to their tiers (the caches are unusable afterwards)."""
        if self.caches:
            self.engine.runner.release_caches(self.caches)
            self.caches = []
        if self.mtp is not None:
            self.mtp.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def reset(self) -> None:
        for c in self.caches:
            c.reset()
        self.tokens = []
        self.rope_delta, self.image_keys = 0, []
        if self.mtp is not None:
            self.mtp.reset()

    @property
    def next_position(self) -> int:
        """Rotary position of the next token fed (all three M-RoPE axes alike for text)."""
        return len(self.tokens) + self.rope_delta

    def snapshot(self) -> tuple:
        return len(self.tokens), [c.snapshot() for c in self.caches], self.rope_delta, list(self.image_keys)

    def restore(self, snap: tuple) -> None:
        n, snaps, self.rope_delta, keys = snap
        for c, s in zip(self.caches, snaps):
            c.restore(s)
        self.tokens = self.tokens[:n]
        self.image_keys = list(keys)

    @torch.inference_mode()
    def feed(self, ids: list[int], all_logits: bool = False, images=None) -> torch.Tensor:
        """Run `ids` after the cached tokens. Returns fp32 logits [len(ids), V] or [1, V] (last).

        `images`: the vision_input.PreparedImages whose placeholder runs `ids` hold (in order), or
        an image_prompt.ImagePrompt whose span covers `ids` at this point (the prompt cache's pieces)."""
        self.engine.check_ids(ids, already=len(self.tokens))
        images = self.engine.image_prompt(ids, images, self)
        if len(ids) <= SMALL_BATCH:  # GEMVs: our CPU kernels' thread pool does the work
            with torch_single_threaded():
                return self._feed(ids, all_logits, images)
        return self._feed(ids, all_logits, images)

    def _feed(self, ids: list[int], all_logits: bool, images=None) -> torch.Tensor:
        runner = self.engine.runner
        outs = []
        step = self.engine.prefill_chunk
        for s in range(0, len(ids), step):
            chunk = ids[s:s + step]
            at = len(self.tokens)
            kw = {}
            if images is not None:  # M-RoPE positions and the tower's rows for this chunk
                pos = images.positions_for(at, len(chunk))
                kw = {"positions": pos, "image_rows": images.rows_for(at, len(chunk), self.engine.encode_images)}
            last = not all_logits
            # With an MTP layer, every fed position also runs it (no head): a draft at position n attends
            # to the MTP's own KV entries for all positions before n, so skipping any lowers acceptance
            # for the rest of the session. Hence an engine loads the layer only when MTP is on.
            if self.mtp is not None and images is None:  # the MTP layer reads every position's hidden state
                logits, hidden = runner.forward_hidden(torch.tensor([chunk]), self.caches, self.next_position,
                                                       last_only=last)
                self.mtp.push(len(self.tokens), chunk, hidden[0])
                outs.append(logits[0])
            elif last and s + step < len(ids):
                runner.prefill_only(torch.tensor([chunk]), self.caches, self.next_position, **kw)  # no head needed
            else:
                outs.append(runner.forward(torch.tensor([chunk]), self.caches, self.next_position,
                                           last_only=last, **kw)[0])
            self.tokens.extend(chunk)
            if images is not None:
                self.rope_delta = int(pos.max()) + 1 - len(self.tokens)
                self.image_keys += [k for k in images.keys if at <= k[0] < len(self.tokens)]
        return torch.cat(outs) if all_logits else outs[-1]


    # ---- speculative decoding (hetero_qwen.decode.SpeculativeGeneration drives these) -------------
    @torch.inference_mode()
    def draft(self, token: int, k: int, pick) -> tuple[list[int], list]:
        """Up to k MTP drafts after `token` (which follows the cached tokens)."""
        return self.mtp.draft(len(self.tokens), token, k, pick)

    @torch.inference_mode()
    def verify(self, ids: list[int]) -> torch.Tensor:
        """Run `ids` (a token and its drafts) in one forward, keeping every DeltaNet layer's state after
        each position: fp32 logits [len(ids), V]. Until `commit`, the caches hold all of them."""
        self.engine.check_ids(ids, already=len(self.tokens))
        slots = [c for c in self.caches if hasattr(c, "keep_slots")]
        for c in slots:
            c.keep_slots = True
        try:
            with torch_single_threaded() if len(ids) <= SMALL_BATCH else contextlib.nullcontext():
                logits, hidden = self.engine.runner.forward_hidden(torch.tensor([ids]), self.caches, self.next_position)
        finally:
            for c in slots:
                c.keep_slots = False
        self._verified = (len(self.tokens), list(ids), hidden[0])
        self.tokens.extend(ids)
        return logits[0]

    @torch.inference_mode()
    def commit(self, m: int) -> None:
        """Keep the first m tokens of the last verify: KV caches trimmed, DeltaNet states set to the
        slot of the m-th position (no recompute); the MTP layer gets their hidden states."""
        start, ids, hidden = self._verified
        self._verified = None
        for c in self.caches:
            c.trim(len(ids) - m)
        del self.tokens[start + m:]
        if self.mtp is not None:
            self.mtp.push(start, ids[:m], hidden[:m])


class Engine:
    def __init__(self, cfg: ModelConfig, runner: Runner, path: Path | None, context: int,
                 eos_ids: tuple[int, ...] = (), tokenizer=None, plan=None,
                 prefill_chunk: int = Profile.prefill_chunk, mtp=None):
        self.cfg, self.runner, self.path = cfg, runner, path
        self.context = context
        self.devices = runner.devices
        self.prefill_chunk = prefill_chunk  # tokens per prefill forward (the profile's prefill.chunk)
        self.eos_ids = tuple(eos_ids) or cfg.eos_token_ids
        self._tokenizer = tokenizer
        self.plan = plan
        self.stats = Stats()
        self.mm = None              # vision_config.MultimodalConfig of a checkpoint with a tower
        self.vision = None          # model.vision.VisionWeights on vision_device; None: text only
        self.vision_device = None   # executor Device the plan runs the tower on
        self.vision_note = ""       # why images are refused (no tower, --text-only)
        self.mtp = mtp  # executor.mtp.MtpDrafter when the checkpoint's MTP layer is loaded
        # drafts per step when a request does not say: the plan's k (the loader sets it, planner/mtp.py);
        # k = 2, the model card's num_speculative_tokens, for an engine built without a plan that prices it
        self.draft_tokens = DEFAULT_DRAFT_TOKENS
        self.mtp_note = ""  # why the layer is not loaded when the checkpoint has one (the loader says)

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

    # ---- images -----------------------------------------------------------------------------
    def image_prompt(self, ids: list[int], images, session: Session):
        """`images` for a feed of `ids` as an ImagePrompt (None when there are none); one line
        when the prompt holds image placeholders the engine cannot fill."""
        if images is None:  # a lone generated placeholder is embedded as text, as transformers does
            if self.mm is not None and len(ids) > 1 and self.mm.image_token_id in ids:
                raise InputError("the prompt holds image placeholder tokens but no image was attached")
            return None
        if self.vision is None:
            raise InputError(self.vision_note or "this model takes no images")
        from .image_prompt import ImagePrompt
        if isinstance(images, ImagePrompt):
            if not images.covers(len(session.tokens), ids):
                raise InputError("the image prompt does not cover the tokens fed")
            return images
        if not len(images):
            return self.image_prompt(ids, None, session)
        return ImagePrompt(self.mm, ids, images, offset=len(session.tokens), start=session.next_position)

    def encode_images(self, images) -> torch.Tensor:
        """The tower on the plan's device: PreparedImages -> [placeholder tokens, H] rows."""
        from .model.vision import vision_tower
        dev = self.vision_device
        t0 = time.perf_counter()
        rows = vision_tower(self.vision, images.pixel_values.to(dev.torch), images.grid_thw)
        dev.busy_seconds += time.perf_counter() - t0
        self.stats.extra["image_tokens"] = self.stats.extra.get("image_tokens", 0) + rows.shape[0]
        return rows

    # ---- public API -----------------------------------------------------------------------
    def session(self, mtp: bool = True) -> Session:
        """A new sequence; `mtp` False: one that never drafts (its tokens skip the MTP layer)."""
        return Session(self, mtp)

    def logits(self, ids: list[int]) -> torch.Tensor:
        """Prefill logits for every position: fp32 [len(ids), vocab]."""
        s = self.session(mtp=False)  # no drafts: the MTP layer need not run
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
        m = self.plan.mtp
        spec = (f" ({m.decode_tokens_per_s_mtp:.1f} with MTP, {m.draft_tokens} drafts per step)"
                if m is not None and m.draft_tokens and self.mtp is not None else "")
        return (f"plan {self.plan.policy}: {tiers}{sim}; predicted decode {p.decode_tokens_per_s:.1f} tok/s{spec}, "
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
                 params: SamplingParams | None = None, images=None, mtp: bool | None = None,
                 draft_tokens: int | None = None) -> Iterator[int]:
        """Stream new token ids. Stops after an eos/stop id (which is yielded) or max_new_tokens.
        `images`: vision_input.PreparedImages for the placeholder runs in `ids`, in order;
        `mtp`: speculative decoding with the MTP layer (None: as the plan says, when the layer is loaded);
        `draft_tokens`: drafts per step (None: the plan's k, `engine.draft_tokens`; 0: off)."""
        params = params or SamplingParams(temperature, top_p, top_k, min_p, presence_penalty,
                                          repetition_penalty, seed)
        k = self.speculation(mtp, draft_tokens)
        return self._generate(list(ids), max_new_tokens, params,
                              tuple(stop_ids) if stop_ids is not None else self.eos_ids, session, images, k)

    def speculation(self, mtp: bool | None, draft_tokens: int | None) -> int:
        """Drafts per decode step (0: plain decoding) for the `mtp` / `draft_tokens` options."""
        if draft_tokens is not None and draft_tokens < 0:
            raise InputError(f"--draft-tokens must be >= 0 (got {draft_tokens})")
        if mtp and self.mtp is None:
            raise InputError(self.mtp_note or "this checkpoint has no MTP layer (mtp.* tensors): use --no-mtp")
        if mtp is False or self.mtp is None:
            return 0
        return self.draft_tokens if draft_tokens is None else draft_tokens

    def _generate(self, ids, max_new_tokens, params, stop, session, images=None, k: int = 0) -> Iterator[int]:
        session = session or self.session(mtp=k > 0)  # a one-off reply without drafts skips the MTP layer
        self.check_ids(ids, already=len(session.tokens))
        sampler = Sampler(params, session.tokens + ids, self.cfg.vocab_size)
        self.stats = stats = Stats(prompt_tokens=len(ids))
        traffic0 = self.devices.traffic.snapshot()
        busy0 = {name: d.busy_seconds for name, d in self._devs()}
        try:
            yield from self._loop(ids, max_new_tokens, stop, session, sampler, stats, images, k)
        finally:
            stats.extra.update(self.devices.traffic.since(traffic0).as_dict())
            stats.extra["seconds_by_device"] = {name: round(d.busy_seconds - busy0[name], 4) for name, d in self._devs()}
            stats.extra["peak_bytes"] = {k: v["peak_bytes"] for k, v in self.memory_report().items()}

    def _devs(self):
        return [(name, d) for name, d in (("gpu", self.devices.gpu), ("cpu", self.devices.cpu)) if d is not None]

    def _loop(self, ids, max_new_tokens, stop, session, sampler, stats, images=None, k: int = 0):
        t0 = time.perf_counter()
        logits = session.feed(ids, images=images)[-1]
        stats.prefill_seconds = time.perf_counter() - t0
        args = (lambda t: session.feed(t)[-1], lambda: len(session.tokens), self.context,
                logits, sampler, stop, max_new_tokens)
        check = dict(check_logits=lambda lg, n: check_finite_logits(lg, n, self, session.tokens))
        gen = (SpeculativeGeneration(*args, spec=session, draft_tokens=k, **check) if k
               else Generation(*args, **check))
        try:
            yield from gen
        finally:
            stats.decode_tokens, stats.decode_seconds = gen.decode_steps, gen.decode_seconds
            if k:
                stats.extra.update(draft_tokens_proposed=gen.drafts_proposed,
                                   draft_tokens_accepted=gen.drafts_accepted,
                                   mean_accepted_length=round(gen.mean_accepted_length, 3))
        if gen.finish_reason == CONTEXT:
            raise ContextLimitReached(f"generation reached the context limit of {self.context} tokens "
                                      f"({context_advice(self.context, self.cfg.max_position_embeddings)})")
