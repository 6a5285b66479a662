"""One rule for context lengths beyond what the model can address.

A requested context (profile `context:`, `--context`) larger than the model's
`max_position_embeddings` is capped to it, with a note; `plan` and `load` apply the same cap, and
the errors at the limit say which of the two bounds was hit.
"""

from __future__ import annotations


def effective_context(requested: int, max_positions: int) -> tuple[int, str | None]:
    """(context to plan and run with, a one-line note when it was capped)."""
    if requested > max_positions:
        return max_positions, (f"note: context {requested} is beyond the model's {max_positions} positions "
                               f"(max_position_embeddings); capped to {max_positions}")
    return requested, None


def context_advice(context: int, max_positions: int) -> str:
    """What the user can do once `context` tokens are used up."""
    if context >= max_positions:
        return f"that is the model's maximum (max_position_embeddings {max_positions}); shorten the prompt"
    return "shorten the prompt or raise `context` in the profile"
