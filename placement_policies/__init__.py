"""Placement policies and the one entry point that plans a model for a profile.

    plan = make_plan(load_config("qwen3.6-27b"), load_profile("gpu24-ram64.yaml"))
"""

from __future__ import annotations

import difflib

from hetero_qwen.config import ModelConfig
from hetero_qwen.errors import ProfileError
from hetero_qwen.planner.context import PlanContext
from hetero_qwen.planner.formats import resolve_formats
from hetero_qwen.planner.gpu_format_choice import choose_gpu_format
from hetero_qwen.planner.run_policy import run_policy
from hetero_qwen.planner.plan import Plan
from hetero_qwen.profile import Profile

from . import auto, ffn_cpu, layers

POLICIES = {
    "auto": auto.choose,
    "layers": layers.choose,
    "ffn-cpu": ffn_cpu.choose,
}


def check_policy(name: str, source: str = "profile") -> str:
    if name not in POLICIES:
        close = difflib.get_close_matches(name, list(POLICIES), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ProfileError(f"{source}: policy: {name!r} is not a policy; {hint}use {' | '.join(POLICIES)}")
    return name


def make_plan(cfg: ModelConfig, profile: Profile, policy: str | None = None,
              context: int | None = None, model: str = "model", compute_dtype: str = "bf16",
              vision=None) -> Plan:
    """The best plan of `policy` (default: the profile's) for `cfg` within `profile`'s budgets,
    in the formats this checkpoint and compute dtype allow (planner.formats.resolve_formats).
    `vision` (a VisionConfig) adds the vision tower as a group (planner/vision.py) unless the
    profile says `vision: off`.
    Raises PlanError (one line: what is missing, which knob fixes it) when nothing fits."""
    if context is not None:
        profile = profile.replace(context=context)
    profile = resolve_formats(cfg, profile, compute_dtype)
    name = check_policy(policy or profile.policy, "--policy" if policy else profile.source)
    if vision is None or not profile.vision:
        return choose_gpu_format(cfg, profile, lambda prof: run_policy(PlanContext(cfg, prof, model), name,
                                                                      POLICIES[name]))
    from hetero_qwen.planner.vision import max_pixels_for, plan_with_tower
    profile = profile.replace(image_max_pixels=max_pixels_for(profile, model))
    return choose_gpu_format(cfg, profile, lambda fprof: plan_with_tower(
        lambda prof: run_policy(PlanContext(cfg, resolve_formats(cfg, prof, compute_dtype), model), name,
                                POLICIES[name]),
        fprof, vision, 4 if compute_dtype == "fp32" else 2, compute_dtype))
