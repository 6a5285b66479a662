"""Options and helpers shared by the commands that load a model."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from ..sampling import PRESETS

from ..errors import InputError

ModelOpt = typer.Option(None, "--model", "-m", help="Checkpoint directory (default: the embedded tiny random model)")
ProfileOpt = typer.Option(None, "--profile", "-p", help="Memory-budget YAML profile (default: probe this machine)")
# sampling flags shared by `generate` and `chat`; None = the preset's value
TemperatureOpt = typer.Option(None, "--temperature", "-t", min=0.0, help="0 = greedy")
TopPOpt = typer.Option(None, "--top-p")
TopKOpt = typer.Option(None, "--top-k")
MinPOpt = typer.Option(None, "--min-p")
PresencePenaltyOpt = typer.Option(None, "--presence-penalty")
RepetitionPenaltyOpt = typer.Option(None, "--repetition-penalty")
ImageMinPixelsOpt = typer.Option(None, "--image-min-pixels", min=1,
                                 help="Smallest image size in pixels (default: the checkpoint's processor's)")
ImageMaxPixelsOpt = typer.Option(None, "--image-max-pixels", min=1,
                                 help="Largest image size in pixels; bigger images are resized (default: the processor's)")
TextOnlyOpt = typer.Option(False, "--text-only", help="Skip the vision tower: no images, its memory freed")
# chat and serve: no preset means the model card's mode preset (thinking-general / instruct)
ModePresetOpt = typer.Option(None, "--preset", help=f"Sampling preset: {', '.join(PRESETS)} (default: "
                                                    f"thinking-general when thinking, instruct otherwise)")
DtypeOpt = typer.Option(None, "--dtype", help="Compute dtype: bf16 | fp32 (default: checkpoint's)")


def say(msg: str) -> None:
    """A status line for people: stderr, so stdout stays clean for pipes."""
    print(msg, file=sys.stderr, flush=True)


def resolve_model(model: Optional[str]) -> Path:
    if model is not None:
        if not model.strip():
            raise InputError("--model is empty; give a checkpoint directory (or leave --model out for the tiny model)")
        return Path(model)
    from ..tiny import ensure_tiny
    path = ensure_tiny()
    say(f"no --model given: using the embedded tiny model at {path} (random weights, output is noise)")
    return path

MtpOpt = typer.Option(None, "--mtp/--no-mtp",
                      help="Speculative decoding with the checkpoint's MTP layer (default: when the plan predicts it pays)")
DraftTokensOpt = typer.Option(None, "--draft-tokens", min=0,
                              help="Tokens the MTP layer drafts per step (default: the plan's k; 0: off)")
