"""Start-up timing, off unless ``RLHFJOB_TIMING`` is set: where a job's first seconds go.

With ``RLHFJOB_TIMING=1`` in the environment, :func:`mark` prints one line to
stderr per phase a process reaches (python started, torch imported, the
rendezvous met, gloo and RPC up, the executor set up, the first episode begun)::

    rlhfjob timing: <process> <phase> at <unix seconds>

Wall-clock seconds, so lines of different processes of one host line up
(``bench/startup_bench.py`` reads them). Unset, a mark costs one dict lookup
and prints nothing. Nothing here imports torch.
"""

from __future__ import annotations

import os
import sys
import time

from rlhfjob_operator.contract import DRIVER_ROLE, ENV_REPLICA, ENV_ROLE, ENV_TIMING

__all__ = ["enabled", "mark", "process_started"]

PREFIX = "rlhfjob timing: "


def enabled() -> bool:
    """Whether ``RLHFJOB_TIMING`` asks for the lines (any value but empty or 0)."""
    return os.environ.get(ENV_TIMING, "") not in ("", "0")


def mark(phase: str, *, who: str | None = None, at: float | None = None) -> None:
    """Print ``phase``'s line when timing is on; ``at`` defaults to now.

    ``who`` defaults to the process's RPC name from the contract's environment
    (``driver`` or ``<role>-<replica>``), else ``main`` (a plain Python process).
    """
    if not enabled():
        return
    if who is None:
        role = os.environ.get(ENV_ROLE)
        if not role:
            who = "main"
        else:
            who = role if role == DRIVER_ROLE else f"{role}-{os.environ.get(ENV_REPLICA, '0')}"
    stamp = time.time() if at is None else at
    print(f"{PREFIX}{who} {phase} at {stamp:.3f}", file=sys.stderr, flush=True)


def process_started() -> float:
    """When this process was started (exec'd or forked), in unix seconds, to ~10 ms.

    From ``/proc/self/stat`` and ``/proc/uptime``; now where there is no /proc.
    """
    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as up:
            # Field 22, counted after the parenthesised command name (which may hold spaces).
            ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
            uptime = float(up.read().split()[0])
    except (OSError, ValueError, IndexError):
        return time.time()
    return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
