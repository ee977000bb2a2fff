"""Which kind of process this is, set once by ``rlhfjob.worker`` before user code runs.

``role`` is None in a plain Python process (the Engine runs in-process),
``"driver"`` in rank 0 of a job (the Engine drives the RPC executor over
``peers``), and ``"worker"`` in a model worker, where the user's entrypoint is
imported only for its classes: ``Engine.learn()`` there stops the import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rlhfjob.comm.env import Peer, WorkerEnv

role: str | None = None
env: WorkerEnv | None = None
peers: list[Peer] = []
job: Any = None  # the validated RLHFJob of this process


class StopEntrypoint(BaseException):
    """Raised by ``Engine.learn()`` in a worker: the entrypoint was imported for its classes."""
