"""The reconciler when the API server refuses to create a pod (403: a quota, an admission
policy; 422: validation): a FailedCreate condition and Warning Event, then a retry after
the backoff that creates the gang once the refusal is over. Never a PermanentError,
which would stop the job's kopf timers for good. An in-memory API stands in for the
server: the reconciler's calls, nothing else."""

from __future__ import annotations

import copy
import threading
import time
from typing import Any, cast

import pytest
from malformed import base_manifest

from rlhfjob_operator.contract import Backoff
from rlhfjob_operator.kube.client import ApiError, KubeClient, QuotaExceeded
from rlhfjob_operator.kube.reconciler import Reconciler

Obj = dict[str, Any]


class FakeApi:
    """One job and the pods created for it; ``refuse`` is raised by every pod create."""

    def __init__(self) -> None:
        m = copy.deepcopy(base_manifest("job"))
        m["metadata"].update(namespace="ns", uid="uid-1", generation=1, resourceVersion="1")
        self.job: Obj = m
        self.pods: dict[str, Obj] = {}
        self.objects: dict[tuple[str, str], Obj] = {}  # the others, by kind and name
        self.events: list[tuple[str, str, str]] = []
        self.refuse: ApiError | None = None
        self.lock = threading.Lock()

    def get_job(self, namespace: str, name: str) -> Obj | None:
        with self.lock:
            return copy.deepcopy(self.job)

    def patch_job_status(
        self, namespace: str, name: str, status: Obj, *, resource_version: str
    ) -> Obj:
        with self.lock:
            assert resource_version == self.job["metadata"]["resourceVersion"]
            merged = {**self.job.get("status", {}), **status}
            self.job["status"] = {k: v for k, v in merged.items() if v is not None}
            self.job["metadata"]["resourceVersion"] = str(int(resource_version) + 1)
            return copy.deepcopy(self.job)

    def list_pods(self, namespace: str, selector: Any) -> list[Obj]:
        with self.lock:
            return copy.deepcopy(list(self.pods.values()))

    def create_if_absent(self, obj: Obj) -> Obj | None:
        name = obj["metadata"]["name"]
        with self.lock:
            if obj["kind"] != "Pod":
                return None if self.objects.setdefault((obj["kind"], name), obj) is not obj else obj
            if self.refuse is not None:
                raise self.refuse
            if name in self.pods:
                return None
            self.pods[name] = obj
        return obj

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Obj | None:
        with self.lock:
            found = self.pods.get(name) if kind == "Pod" else self.objects.get((kind, name))
            return copy.deepcopy(found)

    def post_event(self, raw: Obj, *, type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason, message))

    def lift_gate(self, namespace: str, name: str, gate: str) -> None:
        pass

    def condition(self, type_: str) -> Obj | None:
        conds = self.job.get("status", {}).get("conditions", [])
        return next((c for c in conds if c["type"] == type_), None)


def _wait(what: Any, *, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "the retry did not come in time"
        time.sleep(0.05)


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
        _wait(lambda: len(api.pods) == 6)  # the retry the reconciler scheduled itself
        # As the new pods' events make it (coalesced if the retry still runs).
        rec.request("ns", "job", trigger="pod")
        _wait(lambda: (api.condition("FailedCreate") or {}).get("status") == "False")
        assert (api.condition("FailedCreate") or {})["reason"] == "PodsCreated"
        assert api.job["status"]["phase"] == "Created"
    finally:
        rec.forget("ns", "job")
