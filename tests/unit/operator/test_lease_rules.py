"""Leader election on a Lease (kube/leader.py): the pure rule on a fake clock, and two
electors racing on an in-memory Lease that keeps resourceVersions as the API server
does. The real API server's side: tests/operator/test_leader_election.py."""

from __future__ import annotations

import copy
import datetime as dt
import threading
from typing import Any

import pytest

from rlhfjob_operator.kube.client import AlreadyExists, ApiError, Conflict, NotFound
from rlhfjob_operator.kube.leader import LeaderElector, Observed, Timing, claim

WALL = dt.datetime(2026, 12, 7, 8, 0, 0, tzinfo=dt.timezone.utc)
TIMING = Timing(lease_seconds=15, renew_deadline_seconds=10, retry_seconds=2)


def _claim(observed: Observed | None, *, me: str = "b", at: float = 0.0) -> dict[str, Any] | None:
    return claim(observed, identity=me, monotonic=at, wall=WALL, timing=TIMING)


def test_no_lease_is_taken_with_no_transition() -> None:
    spec = _claim(None)
    assert spec == {
        "holderIdentity": "b",
        "leaseDurationSeconds": 15,
        "acquireTime": "2026-12-07T08:00:00.000000Z",
        "renewTime": "2026-12-07T08:00:00.000000Z",
        "leaseTransitions": 0,
    }


def test_a_live_lease_of_another_waits_its_duration_on_our_own_clock() -> None:
    # Its renewTime is a day old on the other host's clock (skew): that is not expiry.
    held = {"holderIdentity": "a", "leaseDurationSeconds": 15, "renewTime": "2026-12-06T08:00Z"}
    seen = Observed(held | {"leaseTransitions": 3}, since=100.0)
    assert _claim(seen, at=100.0) is None
    assert _claim(seen, at=114.9) is None
    taken = _claim(seen, at=115.0)
    assert taken is not None
    assert taken["holderIdentity"] == "b" and taken["leaseTransitions"] == 4


def test_the_holder_renews_and_keeps_its_acquire_time() -> None:
    mine = {"holderIdentity": "b", "leaseDurationSeconds": 15, "acquireTime": "then"}
    spec = _claim(Observed(mine | {"leaseTransitions": 2}, since=0.0), at=1e6)
    assert spec is not None
    assert spec["acquireTime"] == "then" and spec["leaseTransitions"] == 2
    assert spec["renewTime"] == "2026-12-07T08:00:00.000000Z"


def test_a_released_lease_is_taken_at_once() -> None:
    released = {"holderIdentity": None, "leaseDurationSeconds": 1, "leaseTransitions": 1}
    spec = _claim(Observed(released, since=50.0), at=50.0)
    assert spec is not None and spec["holderIdentity"] == "b" and spec["leaseTransitions"] == 2


@pytest.mark.parametrize(
    ("lease", "renew", "retry", "names"),
    [
        (10, 10, 2, "lease duration (10 s) must be longer than the renew deadline (10 s)"),
        (15, 10, 0, "retry period (0 s) must be above 0"),
        (15, 10, 10, "retry period (10 s) must be above 0 and shorter than the renew"),
    ],
)
def test_timings_that_break_the_rule_are_refused_by_name(
    lease: float, renew: float, retry: float, names: str
) -> None:
    with pytest.raises(ValueError, match=names.replace("(", r"\(").replace(")", r"\)")):
        Timing(lease_seconds=lease, renew_deadline_seconds=renew, retry_seconds=retry)


class LeaseStore:
    """One namespace's Leases as the API server keeps them: a create of an existing name
    is AlreadyExists, a PUT with a stale resourceVersion is Conflict."""

    def __init__(self) -> None:
        self.leases: dict[str, dict[str, Any]] = {}
        self.version = 0
        self.lock = threading.Lock()
        self.down = False

    def request(self, method: str, path: str, *, body: Any = None) -> dict[str, Any]:
        if self.down:
            raise ApiError(503, "ServiceUnavailable", "the API server is down")
        with self.lock:
            name = path.rsplit("/", 1)[1]
            if method == "GET":
                if name not in self.leases:
                    raise NotFound(404, "NotFound", path)
                return copy.deepcopy(self.leases[name])
            name = body["metadata"]["name"]
            if method == "POST" and name in self.leases:
                raise AlreadyExists(409, "AlreadyExists", path)
            if method == "PUT" and (
                self.leases[name]["metadata"]["resourceVersion"]
                != body["metadata"]["resourceVersion"]
            ):
                raise Conflict(409, "Conflict", path)
            self.version += 1
            stored = copy.deepcopy(body)
            stored["metadata"]["resourceVersion"] = str(self.version)
            self.leases[name] = stored
            return copy.deepcopy(stored)


def _elector(store: LeaseStore, identity: str, timing: Timing = TIMING) -> LeaderElector:
    return LeaderElector(
        store,  # type: ignore[arg-type]
        namespace="sys",
        name="rlhfjob-operator",
        identity=identity,
        timing=timing,
    )


def test_one_leader_of_two_and_a_release_hands_over_at_once() -> None:
    store = LeaseStore()
    a, b = _elector(store, "a"), _elector(store, "b")
    assert a.try_acquire_or_renew() is True
    assert b.try_acquire_or_renew() is False and b.holder() == "a"
    assert a.try_acquire_or_renew() is True  # a renews
    assert b.try_acquire_or_renew() is False
    a.release()
    assert store.leases["rlhfjob-operator"]["spec"]["holderIdentity"] is None
    assert b.try_acquire_or_renew() is True
    assert store.leases["rlhfjob-operator"]["spec"]["leaseTransitions"] == 1
    a.release()  # a no longer holds it: nothing to release
    assert store.leases["rlhfjob-operator"]["spec"]["holderIdentity"] == "b"


def test_two_standbys_creating_the_lease_at_once_get_one_leader() -> None:
    store = LeaseStore()
    a, b = _elector(store, "a"), _elector(store, "b")
    real = store.request

    def a_creates_first(method: str, path: str, *, body: Any = None) -> dict[str, Any]:
        if method == "POST" and body["spec"]["holderIdentity"] == "b":
            assert a.try_acquire_or_renew() is True
        return real(method, path, body=body)

    store.request = a_creates_first  # type: ignore[method-assign]
    assert b.try_acquire_or_renew() is False  # its POST met AlreadyExists
    assert store.leases["rlhfjob-operator"]["spec"]["holderIdentity"] == "a"


def test_a_write_with_a_stale_version_is_a_lost_race_not_an_error() -> None:
    store = LeaseStore()
    a, b = _elector(store, "a"), _elector(store, "b")
    assert a.try_acquire_or_renew() is True
    a.release()
    real = store.request

    def a_takes_it_back_first(method: str, path: str, *, body: Any = None) -> dict[str, Any]:
        if method == "PUT" and body["spec"]["holderIdentity"] == "b":
            assert a.try_acquire_or_renew() is True
        return real(method, path, body=body)

    store.request = a_takes_it_back_first  # type: ignore[method-assign]
    assert b.try_acquire_or_renew() is False  # its PUT met Conflict
    assert store.leases["rlhfjob-operator"]["spec"]["holderIdentity"] == "a"


def test_a_leader_that_cannot_renew_loses_at_the_renew_deadline() -> None:
    store = LeaseStore()
    fast = Timing(lease_seconds=0.5, renew_deadline_seconds=0.3, retry_seconds=0.05)
    a = _elector(store, "a", fast)
    assert a.try_acquire_or_renew() is True
    store.down = True
    why = a.renew_until_lost()
    assert why.startswith("renewing failed: 503 ServiceUnavailable")
    assert "s since the last renewal" in why


def test_a_leader_whose_lease_another_took_loses_at_once() -> None:
    store = LeaseStore()
    a = _elector(
        store, "a", Timing(lease_seconds=60, renew_deadline_seconds=50, retry_seconds=0.05)
    )
    assert a.try_acquire_or_renew() is True
    store.leases["rlhfjob-operator"]["spec"]["holderIdentity"] = "c"
    store.version += 1
    store.leases["rlhfjob-operator"]["metadata"]["resourceVersion"] = str(store.version)
    assert a.renew_until_lost().startswith("the Lease is now held by c")


def test_a_stopped_leader_returns_no_reason() -> None:
    store = LeaseStore()
    a = _elector(
        store, "a", Timing(lease_seconds=60, renew_deadline_seconds=50, retry_seconds=0.05)
    )
    assert a.try_acquire_or_renew() is True
    a.stop()
    assert a.renew_until_lost() == ""
