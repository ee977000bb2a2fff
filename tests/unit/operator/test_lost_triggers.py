"""A reconciliation that fails is tried again by the reconciler itself, whatever asked for
it: kopf never retries a pod event's handler, so before this a failed pod could sit
unacted on until the next event (issue 14, "lost triggers")."""

from __future__ import annotations

from typing import cast

import kopf
import pytest
from fakeapi import FakeApi, wait

from rlhfjob_operator.contract import Backoff
from rlhfjob_operator.kube.client import ApiError, KubeClient
from rlhfjob_operator.kube.reconciler import Reconciler


def _reconciler(api: FakeApi) -> Reconciler:
    fast = Backoff(base_seconds=0.1, cap_seconds=0.4)
    return Reconciler(cast(KubeClient, api), backoff=fast, error_backoff=fast)


@pytest.mark.parametrize("failures", [1, 3])
def test_a_failed_pod_triggered_reconcile_is_retried_until_it_succeeds(failures: int) -> None:
    api = FakeApi()
    api.fail_lists = [ApiError(503, "ServiceUnavailable", "etcd is down")] * failures
    rec = _reconciler(api)
    try:
        with pytest.raises(kopf.TemporaryError, match="etcd is down"):
            rec.request("ns", "job", trigger="pod")
        assert api.pods == {}
        wait(lambda: len(api.pods) == 6)  # the retries, 0.1 s then doubling
        assert not api.fail_lists
    finally:
        rec.forget("ns", "job")


def test_a_bug_in_a_reconcile_is_retried_too() -> None:
    api = FakeApi()
    rec = _reconciler(api)
    broken = [RuntimeError("a bug")]

    def list_pods(namespace: str, selector: object) -> list[dict[str, object]]:
        if broken:
            raise broken.pop()
        return FakeApi.list_pods(api, namespace, selector)

    api.list_pods = list_pods  # type: ignore[method-assign]
    try:
        with pytest.raises(RuntimeError, match="a bug"):
            rec.request("ns", "job", trigger="pod")
        wait(lambda: len(api.pods) == 6)
    finally:
        rec.forget("ns", "job")


def test_a_permanent_error_is_not_retried() -> None:
    """An invalid spec marks the job Failed; trying again would only fail again."""
    api = FakeApi()
    api.job["spec"]["models"]["ppo-policy"] = {}  # same pod names as ppo_policy
    rec = _reconciler(api)
    try:
        with pytest.raises(kopf.PermanentError, match="same pod names"):
            rec.request("ns", "job", trigger="pod")
        assert api.job["status"]["phase"] == "Failed"
        assert not rec._retries, "no retry scheduled"
    finally:
        rec.forget("ns", "job")


def test_a_decisions_own_clock_wakes_the_job_with_no_other_trigger() -> None:
    """activeDeadlineSeconds: the first turn creates the gang and asks to be looked at
    again when the deadline is due; nothing else asks, and the job fails on time."""
    api = FakeApi()
    api.job["spec"]["runPolicy"] = {"activeDeadlineSeconds": 1}
    rec = _reconciler(api)
    try:
        rec.request("ns", "job", trigger="change")
        assert len(api.pods) == 6 and api.job["status"]["phase"] == "Created"
        assert list(rec._retries) == [("ns", "job")]  # the deadline's wake-up
        wait(lambda: api.job["status"]["phase"] == "Failed", timeout=5)
        failed = next(c for c in api.job["status"]["conditions"] if c["type"] == "Failed")
        assert failed["reason"] == "DeadlineExceeded"
    finally:
        rec.forget("ns", "job")
