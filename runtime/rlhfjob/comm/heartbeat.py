"""The heartbeat of a gang, and the fast exit when a peer is lost.

Every process publishes a signed beat counter at the rendezvous each second;
the driver also watches every worker's counter. A worker whose driver's store
is gone, or a driver with a worker whose counter stood still for
``_STALE_S``, calls ``on_lost`` once; the worker process then usually ends by
:func:`fail_fast` with ``EXIT_RETRYABLE``.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta

import torch.distributed as dist

from rlhfjob.comm.rendezvous import Session
from rlhfjob.comm.signing import SignedStore, job_key

__all__ = ["fail_fast", "watch"]

_HEARTBEAT_S = 1.0
# Generous: a loaded machine can stall a process for seconds; real deaths are seen sooner
# by broken RPC connections and by the launcher.
_STALE_S = 30.0


def watch(session: Session, on_lost: Callable[[str], None]) -> None:
    """Start the heartbeat thread; ``on_lost(message)`` is called once when a peer is lost.

    Workers publish a heartbeat and check the driver's store; the driver also
    checks every worker's heartbeat age. The thread ends with
    ``session.stop()``; a store error within a second of that is the job
    ending normally, not a loss.
    """
    env, peers, stop = session.env, session.peers, session.stopped
    # A client of its own: one store client is not safe to share between threads. Beats
    # are signed too: a stranger can neither fake a dead worker's nor stop a live one's.
    client = SignedStore(
        dist.TCPStore(
            env.master_addr, env.master_port, is_master=False, timeout=timedelta(seconds=5)
        ),
        job_key(env, "rendezvous"),
        patience=0,
        name=env.name,
    )

    # Beats are counters, compared with the driver's own clock: hosts' clocks may disagree.
    seen: dict[int, tuple[bytes, float]] = {}

    def loop() -> None:
        beat = 0
        while not stop.wait(_HEARTBEAT_S):
            try:
                beat += 1
                client.set(f"hb/{env.rank}", str(beat))
                if env.is_driver:
                    now = time.monotonic()
                    for peer in peers[1:]:
                        key = f"hb/{peer.rank}"
                        value = client.peek(key) or b""
                        last = seen.get(peer.rank)
                        if last is None or last[0] != value:
                            seen[peer.rank] = (value, now)
                        elif now - last[1] > _STALE_S:
                            on_lost(
                                f"worker {peer.describe()} stopped answering (no heartbeat "
                                f"for {_STALE_S:.0f}s)"
                            )
                            return
            except Exception as exc:  # the store lives in the driver: it is gone
                if stop.wait(1.0):  # ...because the job just ended normally
                    return
                on_lost(
                    f"the driver's rendezvous at {env.master_addr}:{env.master_port} is gone "
                    f"({type(exc).__name__}); the driver died or the job is being torn down"
                )
                return

    threading.Thread(target=loop, name="rlhfjob-heartbeat", daemon=True).start()


def fail_fast(message: str, *, code: int) -> None:
    """Print ``message`` and end the process now: a lost peer leaves nothing to save."""
    print(f"rlhfjob: {message}", file=sys.stderr, flush=True)
    os._exit(code)
