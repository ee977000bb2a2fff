"""Leader election on a ``coordination.k8s.io/v1`` Lease, as client-go's
``leaderelection`` does it for every controller-runtime operator (KubeRay's
``--enable-leader-election``, the Job controller's ``--leader-elect``).

Replicas of the operator compete for one Lease; the one that holds it runs kopf, the
others stand by and poll. The rules, in :func:`claim` (pure, on a fake clock in the
unit tests):

- A Lease that is absent, released (no holder) or held by another replica whose
  record has not changed for ``lease_seconds`` **of our own clock** is taken. Time is
  measured from when this replica last saw the record change, never from the
  ``renewTime`` written by another host, so clock skew between nodes cannot make a
  live lease look expired (client-go's ``observedTime``).
- The holder renews every ``retry_seconds``. A holder that has not renewed for
  ``renew_deadline_seconds`` has lost: it must stop acting before the lease runs
  out on a standby's clock, so ``renew_deadline_seconds < lease_seconds`` leaves
  the gap in which the old leader is gone and no new one acts yet.
- Writes carry the read ``resourceVersion``: two standbys racing for an expired
  lease get one success and one 409 Conflict, which is a lost race, not an error.
- A holder that stops cleanly releases the Lease (no holder, a 1 s duration), so a
  standby takes over at its next poll instead of a lease duration later.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import math
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from rlhfjob_operator.kube.client import AlreadyExists, ApiError, Conflict, KubeClient, NotFound

__all__ = [
    "LeaderElector",
    "Timing",
    "acquire",
    "claim",
    "default_identity",
    "renew_in_background",
]

log = logging.getLogger(__name__)

_API = "/apis/coordination.k8s.io/v1"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Timing:
    """client-go's defaults (controller-runtime's too): 15 s, 10 s, 2 s."""

    lease_seconds: float = 15.0
    renew_deadline_seconds: float = 10.0
    retry_seconds: float = 2.0

    def __post_init__(self) -> None:
        if not self.lease_seconds > self.renew_deadline_seconds:
            raise ValueError(
                f"the lease duration ({self.lease_seconds:g} s) must be longer than the "
                f"renew deadline ({self.renew_deadline_seconds:g} s), or a standby could "
                "take the lease while the old leader still acts"
            )
        if not self.renew_deadline_seconds > self.retry_seconds > 0:
            raise ValueError(
                f"the retry period ({self.retry_seconds:g} s) must be above 0 and shorter "
                f"than the renew deadline ({self.renew_deadline_seconds:g} s), or the "
                "leader gets no second try to renew"
            )


@dataclasses.dataclass(frozen=True)
class Observed:
    """A Lease's spec as last read, and when (monotonic, this process's clock) it was
    first seen in that state."""

    spec: dict[str, Any]
    since: float


def _micro_time(now: dt.datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def claim(
    observed: Observed | None,
    *,
    identity: str,
    monotonic: float,
    wall: dt.datetime,
    timing: Timing,
) -> dict[str, Any] | None:
    """The Lease spec to write to hold (or keep) the lease, or None while another
    replica's lease is live. ``observed`` None: there is no Lease yet."""
    spec = dict(observed.spec) if observed is not None else {}
    holder = spec.get("holderIdentity") or ""
    stamp = _micro_time(wall)
    duration = max(1, math.ceil(timing.lease_seconds))
    if holder == identity:
        return spec | {"renewTime": stamp, "leaseDurationSeconds": duration}
    if holder and observed is not None:
        held_for = float(spec.get("leaseDurationSeconds") or timing.lease_seconds)
        if monotonic < observed.since + held_for:
            return None
    return {
        "holderIdentity": identity,
        "leaseDurationSeconds": duration,
        "acquireTime": stamp,
        "renewTime": stamp,
        # As client-go: every change of holder counts, a released lease's too.
        "leaseTransitions": int(spec.get("leaseTransitions") or 0) + (observed is not None),
    }


def default_identity() -> str:
    """``<hostname>_<uuid>``, as client-go's: the pod name on Kubernetes, and unique
    even for two processes on one host."""
    return f"{socket.gethostname()}_{uuid.uuid4()}"


class LeaderElector:
    """One replica's side of the election on Lease ``namespace/name``.

    Blocking, with I/O through ``client`` (give it one of its own, without the
    operator's rate limit, so that throttled reconciles never delay a renewal).
    """

    def __init__(
        self,
        client: KubeClient,
        *,
        namespace: str,
        name: str,
        identity: str,
        timing: Timing,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client, self.namespace, self.name = client, namespace, name
        self.identity, self.timing, self.clock = identity, timing, clock
        self._observed: Observed | None = None
        self._resource_version: str | None = None
        self._last_renew: float | None = None
        self._stop = threading.Event()

    @property
    def _path(self) -> str:
        return f"{_API}/namespaces/{self.namespace}/leases"

    def _lease(
        self, spec: dict[str, Any], *, resource_version: str | None = None
    ) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if resource_version is not None:
            meta["resourceVersion"] = resource_version
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": meta,
            "spec": spec,
        }

    def _replace(self, spec: dict[str, Any]) -> dict[str, Any]:
        """PUT ``spec`` with the resourceVersion last read: Conflict if it changed since."""
        body = self._lease(spec, resource_version=self._resource_version)
        return self.client.request("PUT", f"{self._path}/{self.name}", body=body)

    def _observe(self, lease: dict[str, Any]) -> None:
        spec = dict(lease.get("spec") or {})
        if self._observed is None or self._observed.spec != spec:
            self._observed = Observed(spec, self.clock())
        self._resource_version = lease["metadata"]["resourceVersion"]

    def try_acquire_or_renew(self) -> bool:
        """One round: read the Lease and write it if :func:`claim` says so. True if this
        replica holds the lease now. A lost race (409) is False; other API errors raise
        :class:`ApiError`."""
        try:
            lease: dict[str, Any] | None = self.client.request("GET", f"{self._path}/{self.name}")
        except NotFound:
            lease = None
        now = self.clock()
        if lease is None:
            self._observed = None
        else:
            self._observe(lease)
        spec = claim(
            self._observed,
            identity=self.identity,
            monotonic=now,
            wall=dt.datetime.now(dt.timezone.utc),
            timing=self.timing,
        )
        if spec is None:
            return False
        try:
            if lease is None:
                written = self.client.request("POST", self._path, body=self._lease(spec))
            else:
                written = self._replace(spec)
        except (AlreadyExists, Conflict):
            return False
        self._observe(written)
        self._last_renew = now
        return True

    def holder(self) -> str:
        """The holder as last read ("" for none)."""
        return str((self._observed.spec if self._observed else {}).get("holderIdentity") or "")

    def renew_until_lost(self) -> str:
        """Renew every retry period until :meth:`stop` (returns "") or until no renewal
        succeeded for the renew deadline (returns why). Call once leading."""
        assert self._last_renew is not None, "renew_until_lost before the lease was held"
        while not self._stop.wait(self.timing.retry_seconds):
            try:
                if self.try_acquire_or_renew():
                    continue
                why = f"the Lease is now held by {self.holder() or 'no one'}"
            except ApiError as exc:
                why = f"renewing failed: {exc}"
            overdue = self.clock() - self._last_renew
            if self._stop.is_set():
                return ""
            if self.holder() not in ("", self.identity) or overdue >= (
                self.timing.renew_deadline_seconds
            ):
                return f"{why} ({overdue:.1f} s since the last renewal)"
            log.warning("lease %s/%s: %s; retrying", self.namespace, self.name, why)
        return ""

    def stop(self) -> None:
        self._stop.set()

    def release(self) -> None:
        """Give the lease up if this replica still holds it (a stale resourceVersion
        means it does not: nothing to release)."""
        if self._observed is None or self.holder() != self.identity:
            return
        stamp = _micro_time(dt.datetime.now(dt.timezone.utc))
        spec = self._observed.spec | {
            "holderIdentity": None,
            "leaseDurationSeconds": 1,
            "renewTime": stamp,
            "acquireTime": stamp,
        }
        try:
            self._replace(spec)
        except (Conflict, NotFound):
            return
        log.info("lease %s/%s released", self.namespace, self.name)


async def acquire(elector: LeaderElector) -> None:
    """Try every retry period until this replica holds the lease; cancel to give up.
    API errors while standing by are logged and tried again."""
    waiting_on: str | None = None
    while True:
        try:
            if await asyncio.to_thread(elector.try_acquire_or_renew):
                return
            if elector.holder() != waiting_on:
                waiting_on = elector.holder()
                log.info(
                    "standing by: lease %s/%s is held by %s",
                    elector.namespace,
                    elector.name,
                    waiting_on,
                )
        except ApiError as exc:
            log.warning("lease %s/%s: %s; trying again", elector.namespace, elector.name, exc)
        await asyncio.sleep(elector.timing.retry_seconds)


def renew_in_background(
    elector: LeaderElector, *, on_lost: Callable[[str], None]
) -> threading.Thread:
    """A daemon thread that renews the held lease, apart from kopf's event loop (a busy
    loop must not delay a renewal), and calls ``on_lost(why)`` if leadership is lost."""

    def run() -> None:
        why = elector.renew_until_lost()
        if why:
            on_lost(why)

    thread = threading.Thread(target=run, name="lease-renewal", daemon=True)
    thread.start()
    return thread
