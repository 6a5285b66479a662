"""A profile checked against the model it will plan/run and the machine it runs on.

Shared by `plan` and `load` so both follow the same rules: a context beyond the model's positions
is capped with a note (hetero_qwen.context_limit); an `overrides` entry that matches no weight group
is an error (a typo would otherwise silently change nothing); `cpu.threads` beyond the CPUs this
process may use is clamped with a note (ten thousand threads would stall the machine). Notes are
only printed for values the user set: the defaults are capped and clamped quietly.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from .config import ModelConfig
from .context_limit import effective_context
from .errors import ProfileError
from .profile import DEFAULTS, Profile


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def check_overrides(cfg: ModelConfig, prof: Profile) -> None:
    names = [g.name for g in cfg.weight_groups()]
    for i, o in enumerate(prof.overrides):
        if not any(o.matches(n) for n in names):
            at = f"{prof.source}:{o.line}" if o.line is not None else prof.source
            raise ProfileError(f"{at}: overrides[{i}].match: {o.match!r} matches no weight group of this model "
                               f"(groups are named like {names[1]}, {names[2]}, {names[-1]})")


def checked_profile(cfg: ModelConfig, prof: Profile, context: int | None = None,
                    say: Callable[[str], None] = lambda m: None, clamp_threads: bool = True) -> Profile:
    """`prof` with the context capped to the model and, for a run on this machine, the threads
    clamped to the usable CPUs; each change is reported through `say` in one line."""
    check_overrides(cfg, prof)
    ctx, note = effective_context(context or prof.context, cfg.max_position_embeddings)
    if note and (context is not None or prof.context != DEFAULTS.context):  # the default is capped quietly
        say(note)
    prof = prof.replace(context=ctx)
    if clamp_threads:
        cpus = usable_cpus()
        if prof.threads > cpus:
            if prof.threads != DEFAULTS.threads:  # said only when the profile asked for that many
                say(f"note: cpu.threads {prof.threads} is more than the {cpus} CPUs this process may use; "
                    f"using {cpus}")
            prof = prof.replace(threads=cpus)
    return prof
