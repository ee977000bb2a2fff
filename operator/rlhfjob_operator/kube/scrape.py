"""Reads a running driver's progress from its metrics endpoint, at a bounded rate.

The driver serves Prometheus text on its pod IP at the contract's metrics port
(``DEFAULT_METRICS_PORT``, 9090), which the job's NetworkPolicy admits from
anywhere. :class:`ProgressReader` reads it for the reconciler at most once every
``interval`` seconds per job, only from a driver pod that is Running with an IP, with
a short timeout; what it read is parsed by the pure
:func:`rlhfjob_operator.progress.from_metrics`.

Edge cases: a read that fails (refused, timed out, not the exposition format) gives
None and counts as a read, so a driver that does not answer is asked again only after
``interval``; the reconciler then leaves ``status.progress`` as it was. A job whose
driver is not running is not read, and its last read time is kept.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import urllib.request
from collections.abc import Callable

from rlhfjob_operator import progress
from rlhfjob_operator.contract import DEFAULT_METRICS_PORT
from rlhfjob_operator.kube.status import Pod, pod_phase, terminating

__all__ = ["ProgressReader"]

log = logging.getLogger("rlhfjob_operator")
_TIMEOUT_S = 2.0
_MAX_BYTES = 4 << 20  # a driver's /metrics is tens of kilobytes


class ProgressReader:
    def __init__(
        self,
        *,
        interval: float,
        fetch: Callable[[str], str] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = interval
        self._fetch = fetch or _http_get
        self._monotonic = monotonic
        self._last: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def read(
        self, namespace: str, name: str, driver: Pod | None, *, now: dt.datetime
    ) -> progress.Live | None:
        """The driver's progress, or None: not due yet, no running driver, or the read
        failed."""
        if driver is None or pod_phase(driver) != "Running" or terminating(driver):
            return None
        ip = (driver.get("status") or {}).get("podIP")
        if not ip:
            return None
        key, clock = (namespace, name), self._monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and clock - last < self.interval:
                return None
            self._last[key] = clock
        host = f"[{ip}]" if ":" in ip else ip
        url = f"http://{host}:{DEFAULT_METRICS_PORT}/metrics"
        try:
            text = self._fetch(url)
        except (OSError, ValueError) as exc:
            log.debug("%s/%s: no progress from %s: %s", namespace, name, url, exc)
            return None
        return progress.from_metrics(text, now=now)

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._last.pop((namespace, name), None)


def _http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as resp:
        return resp.read(_MAX_BYTES).decode("utf-8", errors="replace")
