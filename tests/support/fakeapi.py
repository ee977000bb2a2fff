"""An in-memory stand-in for the API server with one RLHFJob: the calls the operator's
Reconciler makes of its KubeClient, nothing else, for unit tests of its retries."""

from __future__ import annotations

import copy
import threading
import time
from typing import Any

from malformed import base_manifest

from rlhfjob_operator.kube.client import ApiError

Obj = dict[str, Any]


class FakeApi:
    """One job and the pods created for it; ``refuse`` is raised by every pod create,
    ``fail_lists`` by that many pod lists (then they answer again); the nodes in
    ``lost_nodes`` are not Ready."""

    def __init__(self) -> None:
        m = copy.deepcopy(base_manifest("job"))
        m["metadata"].update(namespace="ns", uid="uid-1", generation=1, resourceVersion="1")
        self.job: Obj = m
        self.pods: dict[str, Obj] = {}
        self.objects: dict[tuple[str, str], Obj] = {}  # the others, by kind and name
        self.events: list[tuple[str, str, str]] = []
        self.refuse: ApiError | None = None
        self.fail_lists: list[ApiError] = []
        self.lost_nodes: set[str] = set()
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
            if self.fail_lists:
                raise self.fail_lists.pop(0)
            return copy.deepcopy(list(self.pods.values()))

    def node_ready(self, name: str) -> bool:
        return name not in self.lost_nodes

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


def wait(what: Any, *, timeout: float = 15.0) -> None:
    """Until ``what()`` is true, polling; fails the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "the retry did not come in time"
        time.sleep(0.05)
