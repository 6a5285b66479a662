"""Which profile a command runs with, decided in one place for every command (run, chat, plan and
`hetero_qwen.load`): an explicit profile (path, dict or Profile); else $HETERO_QWEN_PROFILE; else
this machine, measured once per process (`hetero-qwen probe`) and said in one line."""

from __future__ import annotations

import os
import sys

from .profile import Profile, load_profile

ENV = "HETERO_QWEN_PROFILE"
_probed: Profile | None = None  # this machine's measured profile, once per process


def probed_profile() -> Profile:
    """This machine's profile as `hetero-qwen probe` writes it (measured on the first call)."""
    global _probed
    if _probed is None:
        import yaml

        from .probe import measure, profile_yaml
        _probed = load_profile(yaml.safe_load(profile_yaml(measure())), name="probed profile")
    return _probed


def resolve_profile(profile=None, quiet: bool = False) -> Profile:
    if isinstance(profile, Profile):
        return profile
    if profile is not None:
        return load_profile(profile)
    env = os.environ.get(ENV)
    if env:
        return load_profile(env)
    first = _probed is None
    prof = probed_profile()
    if first and not quiet:
        print(f"note: no --profile and no ${ENV}: measured this machine "
              "(save a profile with `hetero-qwen probe --out my.yaml`)", file=sys.stderr, flush=True)
    return prof
