"""`hetero-qwen generate` and `hetero-qwen make-tiny`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from ..errors import InputError
from ..sampling import PRESETS
from .common import (DraftTokensOpt, DtypeOpt, MinPOpt, ModelOpt, MtpOpt, PresencePenaltyOpt, ProfileOpt, RepetitionPenaltyOpt, TemperatureOpt,
                     TopKOpt, TopPOpt, resolve_model, say)


def _parse_ids(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise InputError(f"--prompt-ids must be comma-separated integers, got {text!r}") from None


def generate(
    model: Optional[str] = ModelOpt,
    profile: Optional[str] = ProfileOpt,
    prompt: Optional[str] = typer.Option(None, "--prompt", help="Prompt text (raw, no chat template unless --chat)"),
    prompt_ids: Optional[str] = typer.Option(None, "--prompt-ids", help="Prompt as token ids: 1,2,3"),
    chat: bool = typer.Option(False, "--chat", help="Wrap --prompt as one user message with the chat template"),
    think: bool = typer.Option(True, "--think/--no-think", help="enable_thinking for --chat"),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", "-n", min=1),
    preset: str = typer.Option("greedy", "--preset", help=f"Sampling preset: {', '.join(PRESETS)}"),
    temperature: Optional[float] = TemperatureOpt,
    top_p: Optional[float] = TopPOpt,
    top_k: Optional[int] = TopKOpt,
    min_p: Optional[float] = MinPOpt,
    presence_penalty: Optional[float] = PresencePenaltyOpt,
    repetition_penalty: Optional[float] = RepetitionPenaltyOpt,
    seed: Optional[int] = typer.Option(None, "--seed"),
    dtype: Optional[str] = DtypeOpt,
    mtp: Optional[bool] = MtpOpt,
    draft_tokens: Optional[int] = DraftTokensOpt,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of streaming text"),
    stats: bool = typer.Option(False, "--stats", help="Print timing statistics to stderr"),
) -> None:
    """Generate a continuation of a prompt."""
    if (prompt is None) == (prompt_ids is None):
        raise InputError("give exactly one of --prompt or --prompt-ids")
    if preset not in PRESETS:
        raise InputError(f"unknown --preset {preset!r}; choose one of {', '.join(PRESETS)}")
    try:
        params = PRESETS[preset].with_overrides(temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
                                                presence_penalty=presence_penalty,
                                                repetition_penalty=repetition_penalty, seed=seed)
    except ValueError as e:
        raise InputError(str(e)) from None
    from ..loader import load
    engine = load(resolve_model(model), profile=profile, dtype=dtype, mtp=mtp)
    tok = None
    if prompt_ids is not None:
        ids = _parse_ids(prompt_ids)
    else:
        tok = engine.tokenizer
        ids = tok.encode_chat([{"role": "user", "content": prompt}], enable_thinking=think) if chat else tok.encode(prompt)
    out: list[int] = []
    decoder = None
    if not as_json:
        tok = tok or _maybe_tokenizer(engine)
        decoder = tok.stream_decoder() if tok else None
    for t in engine.generate(ids, max_new_tokens=max_new_tokens, params=params, mtp=mtp, draft_tokens=draft_tokens):
        out.append(t)
        if decoder is not None:
            sys.stdout.write(decoder.feed(t))
            sys.stdout.flush()
        elif not as_json:
            sys.stdout.write(f"{t} ")
            sys.stdout.flush()
    if as_json:
        tok = tok or _maybe_tokenizer(engine)
        print(json.dumps({"prompt_ids": ids, "ids": out, "text": tok.decode(out) if tok else None,
                          "stats": engine.stats.as_dict()}))
    else:
        if decoder is not None:
            sys.stdout.write(decoder.finish())
        sys.stdout.write("\n")
    if stats:
        s = engine.stats
        d = s.as_dict()
        say(f"prompt {s.prompt_tokens} tok, prefill {s.prefill_tokens_per_s:.1f} tok/s, "
            f"decode {s.decode_tokens} tok at {s.decode_tokens_per_s:.1f} tok/s; "
            f"moved h2d {d['h2d_bytes']} B, d2h {d['d2h_bytes']} B in {d['hops']} hops "
            f"({d['streamed_bytes']} B streamed); seconds by device {d['seconds_by_device']}; "
            f"peak bytes {d['peak_bytes']}")
        if "draft_tokens_proposed" in d:
            say(f"MTP: {d['draft_tokens_accepted']} of {d['draft_tokens_proposed']} drafts accepted, "
                f"{d['mean_accepted_length']} tokens per verify forward")
        if engine.plan is not None:
            say(engine.plan_summary)


def _maybe_tokenizer(engine):
    from ..errors import CheckpointError
    try:
        return engine.tokenizer
    except CheckpointError:
        return None


def make_tiny(dest: Path = typer.Argument(..., help="Directory to write the tiny model into")) -> None:
    """Write the deterministic tiny random checkpoint (with tokenizer and chat template)."""
    from ..tiny import write_tiny
    write_tiny(dest)
    say(f"wrote tiny random model to {dest}")


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)
    app.command("make-tiny")(make_tiny)
