"""Temporary bytes an op allocates while it runs (attention scores, dequantized weight tiles).

The model is math and knows no devices; an op only *declares* a temporary:

    with temporary(nbytes, "attention scores"):
        ...allocate and use it...

The executor decides what that costs: around each op it may install a meter (`metered`) that
charges the declared bytes to the device the op runs on for as long as the block lasts, so a
temporary that does not fit raises there, naming the op. Without a meter a declaration is free.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from typing import Callable, ContextManager, Iterator

# (nbytes, what) -> a context manager holding the charge; None when nothing is metered
Meter = Callable[[int, str], ContextManager]
_meter: ContextVar[Meter | None] = ContextVar("hq_scratch_meter", default=None)
_where: ContextVar[str | None] = ContextVar("hq_scratch_where", default=None)


def temporary(nbytes: int, what: str) -> ContextManager:
    """Declare `nbytes` of scratch held for the duration of the `with` block."""
    meter = _meter.get()
    return nullcontext() if meter is None or nbytes <= 0 else meter(int(nbytes), what)


@contextmanager
def metered(meter: Meter | None, where: str | None = None) -> Iterator[None]:
    """Charge every `temporary` declared inside this block through `meter`; `where` names the
    device the op runs on (ops ask it with `metered_device`)."""
    token, wtoken = _meter.set(meter), _where.set(where)
    try:
        yield
    finally:
        _meter.reset(token)
        _where.reset(wtoken)


def metered_device() -> str | None:
    """The device name of the metered op running now ("gpu"), or None outside a meter."""
    return _where.get()


def op_scope(hook, name: str, dev, x) -> ContextManager:
    """The op hook's scope around one op (`hook.scope(name, dev, x)`), or nothing."""
    scope = getattr(hook, "scope", None)
    return scope(name, dev, x) if scope is not None else nullcontext()
