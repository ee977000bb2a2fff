"""The operator's client-side rate limit on the API server: a token bucket, as client-go's
``flowcontrol`` gives every controller (``--kube-api-qps``, ``--kube-api-burst``).

``qps`` tokens are added a second, at most ``burst`` kept; each request takes one,
and waits its turn when none is left. Waiters are served in the order they asked: a
request reserves the next token (the count may go below zero) under the lock and
sleeps outside it, so one thread's wait never holds up the bookkeeping of another.
``qps <= 0`` turns the limit off, as in client-go and KubeRay.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["TokenBucket"]


class TokenBucket:
    def __init__(
        self,
        qps: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if qps > 0 and burst < 1:
            raise ValueError(f"a burst of {burst} admits no request; give 1 or more")
        self.qps, self.burst = qps, burst
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        self._tokens = float(burst)
        self._at = clock()

    def reserve(self) -> float:
        """Take the next token; the seconds to wait before using it (0: now)."""
        if self.qps <= 0:
            return 0.0
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.qps)
            self._at = now
            self._tokens -= 1
            return 0.0 if self._tokens >= 0 else -self._tokens / self.qps

    def acquire(self) -> float:
        """Wait for a token; returns the seconds waited."""
        wait = self.reserve()
        if wait > 0:
            self._sleep(wait)
        return wait
