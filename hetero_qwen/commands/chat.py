"""`hetero-qwen chat`: talk to the model in the terminal, or through a pipe."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from .common import (ModePresetOpt, DraftTokensOpt, DtypeOpt, ImageMaxPixelsOpt, ImageMinPixelsOpt, MinPOpt, TextOnlyOpt, ModelOpt, MtpOpt, PresencePenaltyOpt, ProfileOpt, RepetitionPenaltyOpt, TemperatureOpt,
                     TopKOpt, TopPOpt, resolve_model, say)


def chat(
    model: Optional[str] = ModelOpt,
    profile: Optional[str] = ProfileOpt,
    think: bool = typer.Option(True, "--think/--no-think", help="Think before answering (/think switches later)"),
    preserve: bool = typer.Option(False, "--preserve-thinking/--drop-thinking",
                                  help="Keep earlier replies' reasoning in the prompt (/preserve)"),
    hide_thinking: Optional[bool] = typer.Option(
        None, "--hide-thinking/--show-thinking",
        help="Hide or show the reasoning (default: shown dim on a terminal, hidden in a pipe)"),
    system: Optional[str] = typer.Option(None, "--system", help="System prompt"),
    preset: Optional[str] = ModePresetOpt,
    temperature: Optional[float] = TemperatureOpt,
    top_p: Optional[float] = TopPOpt,
    top_k: Optional[int] = TopKOpt,
    min_p: Optional[float] = MinPOpt,
    presence_penalty: Optional[float] = PresencePenaltyOpt,
    repetition_penalty: Optional[float] = RepetitionPenaltyOpt,
    seed: Optional[int] = typer.Option(None, "--seed", min=0, max=2**64 - 1, help="Seed the sampling of the whole chat"),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", "-n", min=1,
                                                 help="Longest reply (default: until the model ends it)"),
    context: Optional[int] = typer.Option(None, "--context", min=16, help="Context length in tokens"),
    dtype: Optional[str] = DtypeOpt,
    image_min_pixels: Optional[int] = ImageMinPixelsOpt,
    image_max_pixels: Optional[int] = ImageMaxPixelsOpt,
    text_only: bool = TextOnlyOpt,
    mtp: Optional[bool] = MtpOpt,
    draft_tokens: Optional[int] = DraftTokensOpt,
    ignore_eos: bool = typer.Option(False, "--ignore-eos", hidden=True,
                                    help="Generate past end tokens (tests, benchmarks)"),
) -> None:
    """Chat with the model: streamed replies, /help for commands, Ctrl-D or /exit to leave."""
    from ..chat.conversation import ChatSettings, Conversation
    from ..chat.repl import ChatApp
    from ..loader import load

    overrides = dict(temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
                     presence_penalty=presence_penalty, repetition_penalty=repetition_penalty)
    settings = ChatSettings(think=think, preserve=preserve, system=system, preset=preset,
                            overrides={k: v for k, v in overrides.items() if v is not None},
                            max_new_tokens=max_new_tokens, ignore_eos=ignore_eos, seed=seed,
                            image_min_pixels=image_min_pixels, image_max_pixels=image_max_pixels,
                            mtp=mtp, draft_tokens=draft_tokens)
    settings.sampling()  # a bad preset or value fails now, before the model loads
    interactive = sys.stdin.isatty()
    path = resolve_model(model)
    say(f"loading {path} ...")
    engine = load(path, profile=profile, dtype=dtype, context=context, text_only=text_only,
                  image_max_pixels=image_max_pixels, mtp=mtp,
                  draft_tokens=draft_tokens)
    conversation = Conversation(engine, settings)
    app = ChatApp(conversation, interactive=interactive, color=interactive and sys.stdout.isatty(),
                  show_thinking=interactive if hide_thinking is None else not hide_thinking)
    for line in summary_lines(engine, path.name, random_weights=model is None):
        app.info(line) if interactive else say(line)
    if interactive:
        from ..chat.commands import describe_sampling
        app.info(app.dim(f"thinking {'on' if settings.think else 'off'} · sampling {describe_sampling(settings)}"
                         f" · /help for commands · Ctrl-D or /exit to leave"))
    raise typer.Exit(app.run())


def summary_lines(engine, name: str, random_weights: bool) -> list[str]:
    lines = [f"hetero-qwen chat · {name} · {str(engine.runner.dtype).removeprefix('torch.')} · "
             f"context {engine.context} tokens"]
    if engine.plan_summary:
        lines.append(engine.plan_summary)
    if random_weights:
        lines.append("this is the embedded tiny model with RANDOM weights: its replies are noise "
                     "(pass --model DIR for a real checkpoint)")
    return lines


def register(app: typer.Typer) -> None:
    app.command("chat")(chat)
