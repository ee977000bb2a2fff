"""Stop requests: a SIGTERM to any process of a gang ends the job at its next safe point.

A drain, an eviction, a preemption (Kueue's too) or ``suspend: true`` deletes a
job's pods, and the kubelet SIGTERMs each of them, then SIGKILLs what is left
after the pod's grace period. Python's default for SIGTERM ends a process on the
spot, losing every episode since the last periodic checkpoint. Instead:

- :func:`take_sigterm` (first thing in ``rlhfjob.worker``) gives SIGTERM a Python
  handler and a wakeup file descriptor that a thread of this module reads: torch's
  blocking calls (RPC's graceful shutdown, an RPC wait) hold the main thread in
  C++, where a Python handler would only run once they return; the wakeup byte is
  written by the C-level handler in whatever thread took the signal.
- Before :func:`arm` (the process has not met its gang: nothing to save) a SIGTERM
  ends the process at once with ``EXIT_DISRUPTED``.
- Once armed, a model worker publishes a signed ``stop/<rank>`` key at the
  rendezvous and keeps serving; the driver notes its own SIGTERM locally and, at
  the end of each episode, asks :func:`requested` whether anyone was told to stop.
  If so it saves an emergency checkpoint and raises :class:`Disrupted`; every
  process then shuts down together, and those that took a SIGTERM end with
  ``EXIT_DISRUPTED`` (the others with 0), so a launcher restarts the gang without
  counting a restart, and it resumes from that checkpoint.
- A process told to stop exits ``EXIT_DISRUPTED`` by itself ``grace`` seconds later
  if the job has not ended by then (``RLHFJOB_STOP_GRACE_S``, default
  :data:`DEFAULT_GRACE_S`): it would be SIGKILLed soon anyway, and a gang whose
  driver never reaches a safe point (it died, or an episode outlasts the grace
  period) must not keep the pod. The last periodic checkpoint then stands.

A stranger who writes ``stop/<rank>`` without the job's secret is ignored (the
value is verified when read). User code that installs its own SIGTERM handler or
wakeup fd (an asyncio loop in the driver's main thread does) replaces this one:
SIGTERM then does what that code says.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from datetime import timedelta
from typing import TYPE_CHECKING

from torch.distributed import TCPStore

from rlhfjob.comm.signing import SignedStore, job_key
from rlhfjob_operator.contract import ENV_STOP_GRACE, EXIT_DISRUPTED

if TYPE_CHECKING:
    from rlhfjob.comm.rendezvous import Session

__all__ = ["DEFAULT_GRACE_S", "Disrupted", "arm", "requested", "stopped", "take_sigterm"]

# Under Kubernetes' default terminationGracePeriodSeconds (30): what is left is the
# shutdown's and the kubelet's margin.
DEFAULT_GRACE_S = 25.0


class Disrupted(BaseException):
    """Raised by ``Engine.learn()`` in the driver after the emergency checkpoint: a
    BaseException, so that a user's ``except Exception`` around ``learn()`` lets it pass."""

    def __init__(self, why: str, *, episode: int, saved: bool) -> None:
        self.why, self.episode, self.saved = why, episode, saved
        where = f"saved episode {episode}" if saved else "saved nothing (no checkpoint path)"
        super().__init__(f"stopped after episode {episode} ({why}): {where}")


class _State:
    """This process's stop request: who was told to stop, and how to tell the driver."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.why: str | None = None  # this process's own SIGTERM, once taken
        self.name = "worker"
        self.rank = 0
        self.armed = False
        self.store: SignedStore | None = None  # armed: the client of this module's thread
        self.ranks: list[int] = []  # the driver's: the workers whose stop key it reads
        self.reader: SignedStore | None = None  # the driver's main thread's own client


_state = _State()


def take_sigterm(name: str, *, grace: float | None = None) -> None:
    """Catch SIGTERM in this process (``name`` in messages) from now on; call from the
    main thread, once. A SIGTERM before this call still ends the process by default."""
    _state.name = name
    if grace is None:
        grace = float(os.environ.get(ENV_STOP_GRACE) or DEFAULT_GRACE_S)
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    signal.set_wakeup_fd(ours.fileno(), warn_on_full_buffer=False)
    # The wakeup fd is written only for signals that have a Python handler.
    signal.signal(signal.SIGTERM, lambda *_: None)
    # Restart the system calls it interrupts: the native threads (gloo, TensorPipe) need
    # not see EINTR for a signal that is handled here.
    signal.siginterrupt(signal.SIGTERM, False)
    sockets = (ours, theirs)  # kept alive by the thread: the fd must stay open

    def watch() -> None:
        while True:
            taken = sockets[1].recv(64)
            if signal.SIGTERM in taken:
                _on_sigterm(grace)

    threading.Thread(target=watch, name="rlhfjob-sigterm", daemon=True).start()


def _on_sigterm(grace: float) -> None:
    with _state.lock:
        if _state.why is not None:
            return  # a second SIGTERM changes nothing: the first one's deadline stands
        _state.why = f"SIGTERM to {_state.name}"
        store, rank, armed = _state.store, _state.rank, _state.armed
    if not armed:
        print(f"rlhfjob {_state.name}: SIGTERM before the gang met: stopping", file=sys.stderr)
        os._exit(EXIT_DISRUPTED)
    print(
        f"rlhfjob {_state.name}: SIGTERM: the job stops after the current episode, with an "
        f"emergency checkpoint; exiting in {grace:.0f}s at the latest",
        file=sys.stderr,
        flush=True,
    )
    if store is not None:
        try:
            store.set(f"stop/{rank}", _state.name)
        except Exception as exc:  # the driver (the store's host) is gone: nothing to save
            print(f"rlhfjob {_state.name}: the driver is gone ({exc}): stopping", file=sys.stderr)
            os._exit(EXIT_DISRUPTED)
    time.sleep(grace)
    print(f"rlhfjob {_state.name}: still running {grace:.0f}s after SIGTERM", file=sys.stderr)
    os._exit(EXIT_DISRUPTED)


def arm(session: Session) -> None:
    """The process has met its gang: from now on a SIGTERM asks for a safe stop."""
    env = session.env

    def client() -> SignedStore:
        # A client each: one store client is not safe to share between threads.
        tcp = TCPStore(
            env.master_addr, env.master_port, is_master=False, timeout=timedelta(seconds=5)
        )
        return SignedStore(tcp, job_key(env, "rendezvous"), patience=0, name=env.name)

    reader = client() if env.is_driver else None
    writer = None if env.is_driver else client()
    with _state.lock:
        _state.name, _state.rank = env.name, env.rank
        _state.store = writer
        _state.ranks = [peer.rank for peer in session.peers if peer.rank != env.rank]
        _state.reader = reader
        _state.armed = True


def stopped() -> bool:
    """Whether this process took a SIGTERM (its exit code is then ``EXIT_DISRUPTED``)."""
    return _state.why is not None


def requested() -> str | None:
    """The driver's check at a safe point: why the job must stop (this process's SIGTERM,
    or a worker's), or None. Only the driver's main thread calls it; unarmed, None."""
    if _state.why is not None:
        return _state.why
    reader = _state.reader
    if reader is None:
        return None
    for rank in _state.ranks:
        who = reader.peek(f"stop/{rank}")
        if who is not None:
            return f"SIGTERM to {who.decode(errors='replace')}"
    return None
