"""The vision tower as a placed group: GPU when it fits beside the text model's best plan, else RAM.

The tower runs once per prompt at prefill, so it never competes with a text layer for the GPU: the
text model is planned twice, with the tower's weights plus its working set (one image at the
profile's `image_max_pixels`) taken from the GPU budget and from the RAM budget, and the GPU variant
wins unless it makes the text plan slower (or does not fit). `vision: off` / `--text-only` skip
all of this (the tower is neither planned nor loaded).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from ..errors import PlanError
from ..profile import Profile
from ..vision_config import VisionConfig
from .plan import GroupPlacement, Plan, TierUsage

TOWER = "model.visual"  # the tower's checkpoint prefix: its group name in the plan
DEFAULT_MAX_PIXELS = 16777216  # Qwen3.5/3.6's preprocessor_config.json longest_edge (4096 x 4096)


def max_pixels_for(profile: Profile, model_dir) -> int:
    """The largest image to plan for: the profile's `image_max_pixels`, else the checkpoint
    processor's budget (`preprocessor_config.json`), else Qwen's default."""
    import json
    from pathlib import Path
    if profile.image_max_pixels:
        return profile.image_max_pixels
    f = Path(str(model_dir)) / "preprocessor_config.json"
    try:
        raw = json.loads(f.read_text())
        return int((raw.get("size") or {}).get("longest_edge") or raw.get("max_pixels"))
    except (OSError, ValueError, TypeError, AttributeError):
        return DEFAULT_MAX_PIXELS


def tower_bytes(vision: VisionConfig, profile: Profile, dtype_bytes: int) -> tuple[int, int]:
    """(resident weights, working set at the profile's largest image) in the compute dtype."""
    return vision.param_bytes(dtype_bytes), vision.working_bytes(profile.image_max_pixels or DEFAULT_MAX_PIXELS,
                                                                 dtype_bytes)


def plan_with_tower(plan_text: Callable[[Profile], Plan], profile: Profile, vision: VisionConfig,
                    dtype_bytes: int, dtype: str) -> Plan:
    weights, working = tower_bytes(vision, profile, dtype_bytes)
    need = weights + working
    options, errors = [], []
    for home in ("gpu", "cpu"):
        if home == "gpu" and (not profile.has_gpu or profile.vram - need <= profile.gpu_reserve):
            continue
        if home == "cpu" and profile.ram - need <= profile.cpu_reserve:
            continue
        field = "vram" if home == "gpu" else "ram"
        try:
            text = plan_text(profile.replace(**{field: getattr(profile, field) - need}))
        except PlanError as e:
            errors.append(e)
            continue
        options.append((home, text))
    if not options:
        raise errors[-1] if errors else PlanError(
            f"the vision tower ({_gib(need)} GiB with its working set) fits neither the GPU nor RAM; "
            f"lower image_max_pixels in the profile or run with --text-only (profile `vision: off`)")
    home, text = options[0]
    if len(options) == 2 and options[1][1].predicted.objective_s < options[0][1].predicted.objective_s * (1 - 1e-9):
        home, text = options[1]
    dev = "gpu" if home == "gpu" else "cpu"
    group = GroupPlacement(name=TOWER, kind="vision", layer=None, bytes=weights, dtype=dtype, home=home,
                           decode_device=dev, prefill_device=dev, stream_prefill=False, crossover_tokens=None)
    tiers = dict(text.tiers)
    t = tiers[home]
    tiers[home] = TierUsage(budget_bytes=profile.vram if home == "gpu" else profile.ram, used_bytes=t.used_bytes + need,
                            lines={**t.lines, "vision": weights, "vision_working": working})
    note = (f"vision tower on {'the GPU' if home == 'gpu' else 'the CPU (RAM)'}: {_gib(weights)} GiB weights + "
            f"{_gib(working)} GiB working set at {profile.image_max_pixels or DEFAULT_MAX_PIXELS} pixels per image")
    return replace(text, tiers=tiers, groups=text.groups + (group,), notes=text.notes + (note,))


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f}"
