"""The one piece that modules and the flow tracer share: who records model calls.

``BaseModule.__getattribute__`` asks ``active()`` whether a flow is being
traced in this thread/context and, if so, hands the call to that recorder;
``rlhfjob.flow`` installs its tracer with ``recording(tracer)``. Keeping the
slot here lets ``rlhfjob.module`` not import ``rlhfjob.flow`` (which imports
``rlhfjob.module`` for its types), so the two have no import cycle.

``recording(None)`` turns recording off inside a trace (running a graph's
nodes for real). Nested ``recording`` blocks restore the outer recorder on
exit, also when the block raises.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

__all__ = ["Recorder", "active", "recording"]


class Recorder(Protocol):
    def record(self, module: Any, method: str) -> Callable[..., Any]:
        """What ``module.method`` resolves to while this recorder is active."""
        ...


_active: contextvars.ContextVar[Recorder | None] = contextvars.ContextVar(
    "rlhfjob_recorder", default=None
)


def active() -> Recorder | None:
    """The recorder of the flow being traced in this context, None when none is."""
    return _active.get()


@contextmanager
def recording(recorder: Recorder | None) -> Iterator[None]:
    """Make ``recorder`` the active one (None: none) for the block."""
    token = _active.set(recorder)
    try:
        yield
    finally:
        _active.reset(token)
