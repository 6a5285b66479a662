"""`hetero-qwen generate` and `hetero-qwen make-tiny`."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Optional

import typer

from ..errors import ContextLimitReached, InputError
from ..interrupts import Interrupted, Terminated, signal_point
from ..sampling import PRESETS
from .common import (DraftTokensOpt, DtypeOpt, ImageMaxPixelsOpt, ImageMinPixelsOpt, MinPOpt, TextOnlyOpt, ModelOpt, MtpOpt, PresencePenaltyOpt, ProfileOpt, RepetitionPenaltyOpt, TemperatureOpt,
                     TopKOpt, TopPOpt, resolve_model, say)


def _parse_ids(text: str) -> list[int]:
    """`1,2,3` (spaces after commas allowed) -> [1, 2, 3]; anything else is refused, not guessed."""
    parts = [t.strip() for t in text.split(",")]
    if not all(re.fullmatch(r"[0-9]+", t) for t in parts):
        raise InputError(f"--prompt-ids must be comma-separated non-negative integers like 1,2,3; got {text!r}")
    return [int(t) for t in parts]


def _stop_reason(out: list[int], max_new_tokens: int, eos_ids) -> str:
    if out and out[-1] in eos_ids:
        return "eos"
    return "max_tokens" if len(out) >= max_new_tokens else "context"


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
    seed: Optional[int] = typer.Option(None, "--seed", min=0, max=2**64 - 1),
    dtype: Optional[str] = DtypeOpt,
    image: Optional[list[Path]] = typer.Option(None, "--image", help="An image for the --chat prompt (repeatable)"),
    image_min_pixels: Optional[int] = ImageMinPixelsOpt,
    image_max_pixels: Optional[int] = ImageMaxPixelsOpt,
    text_only: bool = TextOnlyOpt,
    mtp: Optional[bool] = MtpOpt,
    draft_tokens: Optional[int] = DraftTokensOpt,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of streaming text"),
    stats: bool = typer.Option(False, "--stats", help="Print timing statistics to stderr"),
) -> None:
    """Generate a continuation of a prompt."""
    if (prompt is None) == (prompt_ids is None):
        raise InputError("give exactly one of --prompt or --prompt-ids")
    images = list(image or [])
    if images and not chat:
        raise InputError("--image needs --chat (the image goes into the user message)")
    if images and prompt is None:
        raise InputError("--image needs --prompt (the question about the image)")
    if images and text_only:
        raise InputError("--image and --text-only exclude each other")
    if preset not in PRESETS:
        raise InputError(f"unknown --preset {preset!r}; choose one of {', '.join(PRESETS)}")
    try:
        params = PRESETS[preset].with_overrides(temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
                                                presence_penalty=presence_penalty,
                                                repetition_penalty=repetition_penalty, seed=seed)
    except ValueError as e:
        raise InputError(str(e)) from None
    from ..loader import load
    engine = load(resolve_model(model), profile=profile, dtype=dtype, text_only=text_only,
                  image_max_pixels=image_max_pixels, mtp=mtp,
                  draft_tokens=draft_tokens)
    tok = None
    prepared = None
    if prompt_ids is not None:
        ids = _parse_ids(prompt_ids)
    elif images:
        tok = engine.tokenizer
        ids, prepared = image_chat_prompt(engine, prompt, images, think, image_min_pixels, image_max_pixels)
    else:
        tok = engine.tokenizer
        ids = tok.encode_chat([{"role": "user", "content": prompt}], enable_thinking=think) if chat else tok.encode(prompt)
    out: list[int] = []
    decoder = None
    if not as_json:
        tok = tok or _maybe_tokenizer(engine)
        decoder = tok.stream_decoder() if tok else None
    stop_reason, stopped = None, None
    try:
        for t in engine.generate(ids, max_new_tokens=max_new_tokens, params=params, images=prepared,
                                 mtp=mtp, draft_tokens=draft_tokens):
            out.append(t)
            if decoder is not None:
                sys.stdout.write(decoder.feed(t))
                sys.stdout.flush()
            elif not as_json:
                sys.stdout.write(f"{t} ")
                sys.stdout.flush()
            signal_point("generate-token")
        stop_reason = _stop_reason(out, max_new_tokens, engine.eos_ids)
    except ContextLimitReached as e:
        stop_reason, stopped = "context", e
    except (KeyboardInterrupt, Interrupted, Terminated) as e:
        stop_reason, stopped = "interrupted", e
    if as_json:
        tok = tok or _maybe_tokenizer(engine)
        print(json.dumps({"prompt_ids": ids, "ids": out, "text": tok.decode(out) if tok else None,
                          "stop_reason": stop_reason, "stats": engine.stats.as_dict()}), flush=True)
    else:
        if decoder is not None:
            sys.stdout.write(decoder.finish())
        sys.stdout.write("\n")
        sys.stdout.flush()
    if isinstance(stopped, ContextLimitReached):
        say(f"note: stopped after {len(out)} new tokens: {stopped}")
    elif stopped is not None:
        raise stopped
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


def image_chat_prompt(engine, prompt: str, paths: list[Path], think: bool, min_pixels, max_pixels):
    """One user message of the images then the prompt -> (ids with each image's placeholders,
    the prepared images). Bad files, a missing tower, a prompt beyond the context: one line."""
    from ..image_prompt import expand_image_pads
    from ..vision_input import check_fits, load_image_processor, prepare_images
    if engine.vision is None:
        raise InputError(engine.vision_note or "this model takes no images")
    prep = prepare_images(load_image_processor(engine.path, min_pixels, max_pixels), paths)
    for note in prep.notes:
        say(note)
    content = [{"type": "image", "image": str(p)} for p in paths] + [{"type": "text", "text": prompt}]
    ids = engine.tokenizer.encode_chat([{"role": "user", "content": content}], enable_thinking=think)
    ids = expand_image_pads(ids, prep.token_counts, engine.mm)
    check_fits(len(ids), engine.context)
    return ids, prep


def _maybe_tokenizer(engine):
    from ..errors import CheckpointError
    try:
        return engine.tokenizer
    except CheckpointError:
        return None


def make_tiny(dest: Path = typer.Argument(..., help="New directory to write the tiny model into"),
              force: bool = typer.Option(False, "--force", help="Replace DEST if it is a non-empty directory")) -> None:
    """Write the deterministic tiny random checkpoint (with tokenizer and chat template)."""
    from ..tiny import write_tiny
    write_tiny(dest, force=force)
    say(f"wrote tiny random model to {dest}")


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)
    app.command("make-tiny")(make_tiny)
