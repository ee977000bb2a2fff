"""Third-party noise kept out of the user's output while a process joins its gang.

Starting gloo and torch RPC prints, in every process, gloo's
``[Gloo] Rank N is connected to N peer ranks ...`` (from C++, straight to
file descriptor 1, so no Python logging setting reaches it) and torch's
``You are using a Backend ProcessGroupGloo as a ProcessGroup ... deprecated``
warning (raised by torch's own RPC startup, not by a call of ours). At
``RLHFJOB_LOG_LEVEL=info`` (the default) :func:`quiet_startup` drops exactly
those: descriptors 1 and 2 point into pipes for the duration, a thread per
pipe forwards every other line unchanged to where the descriptor pointed
before, and a warnings filter drops the deprecation. At ``debug`` it changes
nothing. Groups made later (``dist.new_group``) print their own gloo lines
outside this window; ``rlhfjob run`` drops those from worker output.

Edge cases: a line without a newline at the end of the window is forwarded
as it is; a descriptor that cannot be duplicated (closed) is left alone; a
child process started inside the window inherits the pipe, and its output
goes on being forwarded (filtered) until it closes it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import sys
import threading
import warnings
from collections.abc import Iterator

from rlhfjob_operator.contract import LOG_DEBUG, NOISE_PATTERN

__all__ = ["NOISE", "quiet_startup"]

# Matched at the start of whole lines, as they are written; anything else passes.
NOISE = re.compile(NOISE_PATTERN.encode())
_DEPRECATED_BACKEND = r"You are using a Backend .* as a ProcessGroup"
_DRAIN_S = 5.0
_LONGEST_LINE = 1 << 16  # a longer run without a newline is forwarded as it stands
_libc = ctypes.CDLL(None)


def _forward(read_end: int, target: int) -> None:
    """Copy ``read_end`` to ``target`` line by line, minus noise; closes both at EOF."""
    pending = b""
    try:
        while chunk := os.read(read_end, 1 << 16):
            pending += chunk
            lines = pending.splitlines(keepends=True)
            pending = b"" if lines[-1].endswith(b"\n") else lines.pop()
            if len(pending) > _LONGEST_LINE:
                lines.append(pending)
                pending = b""
            kept = b"".join(line for line in lines if not NOISE.match(line))
            if kept:
                os.write(target, kept)
        if pending and not NOISE.match(pending):
            os.write(target, pending)
    except OSError:
        pass  # the original descriptor went away: nothing left to write to
    finally:
        os.close(read_end)
        os.close(target)


@contextlib.contextmanager
def _filtered(fd: int) -> Iterator[None]:
    try:
        target = os.dup(fd)
    except OSError:
        yield  # closed: nothing is printed there anyway
        return
    read_end, write_end = os.pipe()
    os.dup2(write_end, fd)
    os.close(write_end)
    forwarder = threading.Thread(
        target=_forward, args=(read_end, os.dup(target)), name="rlhfjob-quiet", daemon=True
    )
    forwarder.start()
    try:
        yield
    finally:
        _flush()
        os.dup2(target, fd)  # drops the pipe's last write end here: the forwarder sees EOF
        os.close(target)
        forwarder.join(timeout=_DRAIN_S)


def _flush() -> None:
    """Python's and C's buffered output out to the descriptors as they point now: C++
    ``std::cout`` lines sit in C's stdout buffer, which is not line-buffered on a pipe."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # closed or replaced by a test harness
            stream.flush()
    _libc.fflush(None)


@contextlib.contextmanager
def quiet_startup(level: str) -> Iterator[None]:
    """Drop gloo's connection lines and torch's backend deprecation warning inside the
    block, unless ``level`` is ``debug`` (then nothing is changed)."""
    if level == LOG_DEBUG:
        yield
        return
    _flush()  # what was printed before goes out before the descriptors move
    with warnings.catch_warnings(), _filtered(1), _filtered(2):
        warnings.filterwarnings("ignore", message=_DEPRECATED_BACKEND)
        yield
