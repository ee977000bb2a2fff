"""Gloo process tests' launcher: ranks in spawned processes, judged by their exit codes.

A module of its own on pytest's pythonpath (not a conftest): a spawned child
re-imports the test module, and ``import conftest`` there finds the first
conftest.py on ``sys.path``, which in a whole-suite run is ``tests/conftest.py``.
"""

from __future__ import annotations

import socket
from typing import Any

import torch.multiprocessing as mp

__all__ = ["spawned_exit_codes"]


def spawned_exit_codes(
    target: Any, world: int, *args: Any, timeout: float = 120
) -> list[int | None]:
    """Run ``target(rank, world, port, *args)`` in ``world`` spawned processes on a free
    port; their exit codes (a failed check fails one). No multiprocessing queue: its
    semaphore would live in /dev/shm."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=target, args=(r, world, port, *args)) for r in range(world)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join(timeout=timeout)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    return [p.exitcode for p in procs]
