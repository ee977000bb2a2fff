"""A status another operator version wrote (issue 14: "strict status parsing fails running
jobs after an operator upgrade or rollback"): keys and condition types this operator does
not know are passed over, and the job goes on; nothing of it is taken for a bad spec."""

from __future__ import annotations

from typing import cast

from fakeapi import FakeApi

from rlhfjob_operator.contract import Backoff
from rlhfjob_operator.kube.client import KubeClient
from rlhfjob_operator.kube.reconciler import Reconciler


def test_a_newer_operators_status_does_not_fail_the_job() -> None:
    api = FakeApi()
    rec = Reconciler(cast(KubeClient, api), backoff=Backoff(base_seconds=0.1, cap_seconds=0.4))
    try:
        rec.request("ns", "job", trigger="change")
        assert api.job["status"]["phase"] == "Created" and len(api.pods) == 6
        # What a later version might add: a status key, a condition type, a key in one.
        api.job["status"]["gangTopology"] = {"racks": 2}
        api.job["status"]["conditions"].append({"type": "Resized", "status": "True"})
        api.job["status"]["conditions"][0]["observedGeneration"] = 1
        rec.request("ns", "job", trigger="change")
        assert api.job["status"]["phase"] == "Created", api.job["status"].get("message")
        assert api.condition("Failed") is None
        assert len(api.pods) == 6
    finally:
        rec.forget("ns", "job")
