"""`hetero-qwen plan`: where every byte lives and what speed to expect, before loading anything."""

from __future__ import annotations

import sys
from typing import Optional

import typer

DEFAULT_MODEL = "qwen3.6-27b"


def register(app: typer.Typer) -> None:
    @app.command()
    def plan(
        model: Optional[str] = typer.Option(None, "--model", help=f"model directory or preset (default: {DEFAULT_MODEL})"),
        profile: Optional[str] = typer.Option(None, "--profile", help="memory-budget YAML (default: $HETERO_QWEN_PROFILE, else probe this machine)"),
        policy: Optional[str] = typer.Option(None, "--policy", help="auto | layers | ffn-cpu (default: the profile's)"),
        context: Optional[int] = typer.Option(None, "--context", min=1, help="tokens of KV cache (default: the profile's)"),
        as_json: bool = typer.Option(False, "--json", help="print the plan as JSON"),
        text_only: bool = typer.Option(False, "--text-only", help="plan without the vision tower"),
        draft_tokens: Optional[int] = typer.Option(None, "--draft-tokens", min=0, help="MTP drafts per step to "
                                                   "plan for (default: the profile's mtp.draft_tokens, else the best k; 0: off)"),
    ):
        """Plan weight/cache placement for a model and a memory budget; print the report or JSON."""
        from placement_policies import make_plan

        from ..config import load_config
        from ..profile_source import resolve_profile

        if model is None:
            model = DEFAULT_MODEL
            print(f"note: no --model: planning the {DEFAULT_MODEL} preset", file=sys.stderr)
        cfg = load_config(model)
        from ..profile_checks import checked_profile
        from ..vision_config import load_multimodal_config
        prof = checked_profile(cfg, resolve_profile(profile), context, say=lambda m: print(m, file=sys.stderr),
                               clamp_threads=False)
        from ..planner.mtp import with_request
        prof = with_request(prof, None, draft_tokens)
        mm = None if text_only else load_multimodal_config(model)
        result = make_plan(cfg, prof, policy=policy, model=str(model), vision=mm.vision if mm is not None else None)
        if as_json:
            print(result.to_json())
        else:
            from ..planner.report import render
            print(render(result))
