"""Where our own chat template (chat_template.jinja, beside this file) is read from.

It is the template of the embedded tiny model and the fallback for a checkpoint without one.
"""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def our_chat_template() -> str:
    """hetero-qwen's own Jinja chat template for the Qwen3.6 chat format."""
    return resources.files("hetero_qwen").joinpath("chat_template.jinja").read_text(encoding="utf-8")
