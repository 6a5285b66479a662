"""Non-finite numbers: the generate loop stops with one line that says where.

`check_finite_logits` is the only hot-path cost (one `isfinite().all()` over the vocab per token).
Only after a failure, `locate_nonfinite` re-runs the token history in a fresh session with an op
hook and names the first op (layer mixer, FFN or head) whose output went non-finite.
"""

from __future__ import annotations

import torch

from .errors import NumericsError


def check_finite_logits(logits: torch.Tensor, step: int, engine=None, tokens: list[int] | None = None) -> None:
    """Raise NumericsError if `logits` (of the token at position len(tokens)-1, decode step `step`)
    hold NaN or inf; with `engine` and `tokens`, the message names the first op that went bad."""
    if bool(torch.isfinite(logits).all()):
        return
    bad = "NaN" if bool(torch.isnan(logits).any()) else "infinite"
    where = f"at decode step {step}" if step else "in the prompt's prefill (step 0)"
    if tokens:
        where += f", position {len(tokens) - 1}"
    culprit = locate_nonfinite(engine, list(tokens)) if engine is not None and tokens else None
    if culprit:
        where += f"; first non-finite output: {culprit}"
    raise NumericsError(f"the model produced {bad} logits {where} (non-finite or overflowing weights? "
                        f"check the checkpoint)")


def locate_nonfinite(engine, tokens: list[int]) -> str | None:
    """Name of the first op whose output is non-finite when `tokens` are run from scratch
    ("the embedding" when the first op's input already is), or None if it cannot tell."""
    model = engine.runner
    previous = getattr(model, "op_hook", None)
    found: list[str] = []

    def hook(name, dev, h, out):
        if previous is not None:
            previous(name, dev, h, out)
        if found:
            return
        if isinstance(h, torch.Tensor) and not bool(torch.isfinite(h).all()):
            found.append(f"the embedding (input of {name})")
        elif isinstance(out, torch.Tensor) and not bool(torch.isfinite(out).all()):
            found.append(name)

    session = None
    try:
        model.op_hook = hook
        session = engine.session(mtp=False)  # the model's ops only
        session.feed(tokens)
    except Exception:  # diagnosis only: the caller reports the failure either way
        pass
    finally:
        model.op_hook = previous
        if session is not None:
            session.close()
    return found[0] if found else None
