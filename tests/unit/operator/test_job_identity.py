"""A job deleted and applied again under the same name: the old job's pods, ConfigMap
and Secret stay a while (the garbage collector removes them), with the same names and
labels, owned by the old uid. The new job never takes them for its own."""

from __future__ import annotations

import copy
import time
from typing import Any, cast

from test_failed_create import FakeApi
from test_gang_decisions import Sim

from rlhfjob_operator.contract import Backoff
from rlhfjob_operator.kube.client import KubeClient
from rlhfjob_operator.kube.manifests import build_configmap, build_gang
from rlhfjob_operator.kube.reconciler import Reconciler
from rlhfjob_operator.kube.status import of_another_job
from rlhfjob_operator.plan import plan_job
from rlhfjob_operator.spec import load_job


def _old(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` as the deleted job of the same name made it (its uid)."""
    old = copy.deepcopy(obj)
    old["metadata"]["ownerReferences"][0]["uid"] = "uid-old"
    return old


def test_the_old_jobs_pods_are_neither_its_success_nor_its_restarts() -> None:
    sim = Sim(backoffLimit=0)
    for pod in build_gang(sim.job, sim.plan, generation=0):
        old = _old(pod)
        name = old["metadata"]["name"]
        old["status"] = {"phase": "Running"}
        sim.pods[name] = old
    sim.finish("job-driver-g0", 0, "Completed")  # the old job's driver had succeeded
    sim.finish("job-policy-0-g0", 1)  # and one of its pods failed
    d = sim.step()
    assert sim.status.phase == "Created" and sim.status.restarts == 0
    assert len(d.create) == 6 and d.delete == ()  # the old pods are the collector's
    assert not of_another_job(sim.pods["job-reward-0-g0"], None)


def test_an_old_jobs_configmap_holds_the_pods_back_until_it_is_collected() -> None:
    api = FakeApi()
    job = load_job(api.job)
    old = _old(build_configmap(job))
    api.objects[("ConfigMap", old["metadata"]["name"])] = old
    rec = Reconciler(cast(KubeClient, api), backoff=Backoff(base_seconds=0.1, cap_seconds=1))
    try:
        rec.request("ns", "job", trigger="change")
        assert api.pods == {}  # they would mount the old job's spec
        del api.objects[("ConfigMap", old["metadata"]["name"])]  # collected
        deadline = time.monotonic() + 15
        while len(api.pods) < 6:  # the reconciler looks again by itself
            assert time.monotonic() < deadline, "no second look"
            time.sleep(0.05)
        cm = api.objects[("ConfigMap", old["metadata"]["name"])]
        assert cm["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    finally:
        rec.forget("ns", "job")


def test_an_old_jobs_pod_of_the_same_name_is_waited_for_not_adopted() -> None:
    api = FakeApi()
    job = load_job(api.job)
    plan = plan_job(job)
    driver = _old(build_gang(job, plan, generation=0)[0])
    driver["metadata"]["deletionTimestamp"] = "2026-01-01T12:00:00Z"  # being collected
    api.pods[driver["metadata"]["name"]] = driver
    rec = Reconciler(cast(KubeClient, api), backoff=Backoff(base_seconds=0.1, cap_seconds=1))
    try:
        rec.request("ns", "job", trigger="change")  # no PermanentError: not a stranger's
        assert len(api.pods) == 6 and api.pods[driver["metadata"]["name"]] is driver
        del api.pods[driver["metadata"]["name"]]  # collected
        deadline = time.monotonic() + 15
        while driver["metadata"]["name"] not in api.pods:  # the second look creates it
            assert time.monotonic() < deadline, "no second look"
            time.sleep(0.05)
        new = api.pods[driver["metadata"]["name"]]
        assert new["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    finally:
        rec.forget("ns", "job")
