"""The reconciler when the API server refuses to create a pod (403: a quota, an admission
policy; 422: validation): a FailedCreate condition and Warning Event, then a retry after
the backoff that creates the gang once the refusal is over. Never a PermanentError,
which would stop the job's kopf timers for good. An in-memory API stands in for the
server: the reconciler's calls, nothing else (tests/support/fakeapi.py)."""

from __future__ import annotations

from typing import cast

import pytest
from fakeapi import FakeApi, wait

from rlhfjob_operator.contract import Backoff
from rlhfjob_operator.kube.client import ApiError, KubeClient, QuotaExceeded
from rlhfjob_operator.kube.reconciler import Reconciler


@pytest.mark.parametrize(
    "refusal",
    [
        ApiError(403, "Forbidden", 'pods "job-driver-g0" is forbidden: violates PodSecurity'),
        QuotaExceeded(403, "Forbidden", 'pods "job-driver-g0" is forbidden: exceeded quota'),
        ApiError(422, "Invalid", 'Pod "job-driver-g0" is invalid: a webhook said no'),
    ],
    ids=["admission-403", "quota-403", "invalid-422"],
)
def test_a_refused_pod_create_is_a_condition_and_a_retry_not_a_permanent_error(
    refusal: ApiError,
) -> None:
    api = FakeApi()
    api.refuse = refusal
    rec = Reconciler(cast(KubeClient, api), backoff=Backoff(base_seconds=0.1, cap_seconds=1))
    try:
        rec.request("ns", "job", trigger="change")  # raises nothing
        failed = api.condition("FailedCreate")
        assert failed is not None and failed["status"] == "True"
        assert failed["reason"] == refusal.reason
        assert refusal.message in failed["message"] and "retrying in 1s" in failed["message"]
        warnings = [e for e in api.events if e[1] == "FailedCreate"]
        assert [e[0] for e in warnings] == ["Warning"] and refusal.message in warnings[0][2]
        assert api.pods == {}
        api.refuse = None  # the quota grew, the policy was fixed
        wait(lambda: len(api.pods) == 6)  # the retry the reconciler scheduled itself
        # As the new pods' events make it (coalesced if the retry still runs).
        rec.request("ns", "job", trigger="pod")
        wait(lambda: (api.condition("FailedCreate") or {}).get("status") == "False")
        assert (api.condition("FailedCreate") or {})["reason"] == "PodsCreated"
        assert api.job["status"]["phase"] == "Created"
    finally:
        rec.forget("ns", "job")
