"""`weights.gpu_dtype: auto`: which GPU weight format the plan uses, chosen by planning each candidate.

Candidates: the profile's `weights.gpu_formats`, else by the checkpoint's format (a quantized
checkpoint is never widened: its dequantized values in more bytes would only be slower):
    bf16 / fp32 checkpoint -> bf16, int8, int4      fp8 -> fp8, int4
    int8 (ours)            -> int8, int4            int4 (ours, GPTQ, AWQ, compressed-tensors) -> int4
Rule: the most precise candidate whose plan keeps every layer and the head on the GPU; when none
does, the candidate with the best predicted objective (prefill + decode of the profile's workload).
The plan says which it chose and why in a note.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from ..config import ModelConfig
from ..errors import PlanError
from ..profile import Profile
from .group_formats import PRECISION_ORDER
from .items import checkpoint_format
from .plan import Plan

BY_CHECKPOINT = {"bf16": ("bf16", "int8", "int4"), "fp32": ("bf16", "int8", "int4"),
                 "fp8": ("fp8", "int4"), "int8": ("int8", "int4"), "int4": ("int4",)}


def candidates(cfg: ModelConfig, profile: Profile) -> tuple[str, ...]:
    allowed = profile.gpu_formats or BY_CHECKPOINT.get(checkpoint_format(cfg), ("bf16", "int8", "int4"))
    return tuple(sorted(allowed, key=PRECISION_ORDER.index))


def whole_on_gpu(plan: Plan) -> bool:
    return all(g.home == "gpu" for g in plan.groups if g.kind not in ("embed", "vision"))


def choose_gpu_format(cfg: ModelConfig, profile: Profile, plan_one: Callable[[Profile], Plan]) -> Plan:
    """`plan_one(profile)` for the profile as given, or, under gpu_dtype auto with a GPU, for the
    format the rule above picks."""
    if profile.gpu_dtype != "auto":
        return plan_one(profile)
    if not profile.has_gpu:
        return plan_one(profile.replace(gpu_dtype="bf16"))
    plans, error = [], None
    for fmt in candidates(cfg, profile):
        try:
            plans.append((fmt, plan_one(profile.replace(gpu_dtype=fmt))))
        except PlanError as e:
            error = e
    if not plans:
        raise error
    whole = [(f, p) for f, p in plans if whole_on_gpu(p)]
    fmt, plan = whole[0] if whole else min(plans, key=lambda fp: fp[1].predicted.objective_s)
    return dataclasses.replace(plan, notes=plan.notes + (_why(fmt, plans, bool(whole)),))


def _why(fmt: str, plans: list, whole: bool) -> str:
    speeds = ", ".join(f"{f} {p.predicted.decode_tokens_per_s:.1f}" for f, p in plans)
    reason = ("the most precise format that keeps every layer on the GPU" if whole
              else "no format keeps every layer on the GPU; the fastest predicted turn")
    return (f"weights.gpu_dtype auto chose {fmt}: {reason} (decode tokens/s by format: {speeds}); "
            f"set weights.gpu_dtype to choose yourself")
