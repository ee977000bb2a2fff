"""The gang's scheduling gate (decide lifts it once the generation exists) and
runPolicy.schedulingPolicy on the pods and the PodGroup (pure, no server)."""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

import pytest
from malformed import base_manifest

from rlhfjob_operator.contract import Backoff
from rlhfjob_operator.kube.decisions import decide
from rlhfjob_operator.kube.gang import check_min_available, gated
from rlhfjob_operator.kube.manifests import build_gang, build_pod_group
from rlhfjob_operator.kube.names import SCHEDULING_GATE
from rlhfjob_operator.plan import plan_job
from rlhfjob_operator.spec import RLHFJob, RLHFJobStatus, load_job

T0 = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.timezone.utc)
BACKOFF = Backoff(base_seconds=10, cap_seconds=60)
UID = "0b7c3f4e-1111-2222-3333-444455556666"


def _job(scheduling: dict[str, Any] | None = None, **spec: Any) -> RLHFJob:
    m = copy.deepcopy(base_manifest("job"))
    m["metadata"].update(namespace="ns", uid=UID, generation=1)
    if scheduling is not None:
        m["spec"]["runPolicy"] = {"schedulingPolicy": scheduling}
    m["spec"].update(spec)
    return load_job(m)


def _lift(pod: dict[str, Any]) -> None:
    pod["spec"]["schedulingGates"] = [
        g for g in pod["spec"]["schedulingGates"] if g["name"] != SCHEDULING_GATE
    ]


def _decide(job: RLHFJob, pods: list[dict[str, Any]]) -> Any:
    return decide(job, plan_job(job), pods, now=T0, backoff=BACKOFF)


def test_every_pod_is_created_gated_and_without_a_policy_keeps_the_defaults() -> None:
    job = _job()
    for pod in build_gang(job, plan_job(job), generation=0):
        assert pod["spec"]["schedulingGates"] == [{"name": SCHEDULING_GATE}]
        assert gated(pod)
        assert "schedulerName" not in pod["spec"]
        assert "priorityClassName" not in pod["spec"]
    assert build_pod_group(job, plan_job(job), generation=0) is None


def test_the_gates_are_lifted_only_once_every_pod_of_the_generation_exists() -> None:
    job = _job()
    gang = build_gang(job, plan_job(job), generation=0)
    names = [p["metadata"]["name"] for p in gang]
    for missing in range(1, len(gang)):
        d = _decide(job, gang[:-missing])
        assert d.create == tuple(names[-missing:])
        assert d.ungate == ()
    d = _decide(job, gang)
    assert d.create == ()
    assert d.ungate == tuple(names)  # driver first, as created


def test_a_crash_after_lifting_some_gates_is_finished_by_the_next_turn() -> None:
    job = _job()
    gang = build_gang(job, plan_job(job), generation=0)
    for pod in gang[:2]:
        _lift(pod)
    d = _decide(job, gang)
    assert d.ungate == tuple(p["metadata"]["name"] for p in gang[2:])
    for pod in gang:
        _lift(pod)
    again = _decide(job, gang)
    assert again.ungate == () and again.create == ()
    # The same observations, the same answer.
    assert _decide(job, gang) == again


def test_a_gate_another_controller_set_is_not_ours_to_lift() -> None:
    job = _job()
    gang = build_gang(job, plan_job(job), generation=0)
    for pod in gang:
        pod["spec"]["schedulingGates"] = [{"name": "kueue.x-k8s.io/admission"}]
    assert _decide(job, gang).ungate == ()


def test_pods_of_an_older_generation_are_never_ungated() -> None:
    job = _job()
    old = build_gang(job, plan_job(job), generation=0)
    status = {"restartGeneration": 1, "phase": "Restarting"}
    restarted = job.model_copy(update={"status": RLHFJobStatus.model_validate(status)})
    d = _decide(restarted, old)
    assert d.ungate == ()


def test_scheduler_and_priority_reach_every_pod_and_the_pod_settings_win() -> None:
    job = _job(
        {"schedulerName": "volcano", "priorityClassName": "batch-low"},
        driver={"priorityClassName": "driver-high"},
    )
    pods = {
        p["metadata"]["labels"]["rlhf.dev/role"]: p
        for p in build_gang(job, plan_job(job), generation=0)
    }
    assert {p["spec"]["schedulerName"] for p in pods.values()} == {"volcano"}
    assert pods.pop("driver")["spec"]["priorityClassName"] == "driver-high"
    assert {p["spec"]["priorityClassName"] for p in pods.values()} == {"batch-low"}
    assert build_pod_group(job, plan_job(job), generation=0) is None


@pytest.mark.parametrize("min_available", [None, 3])
def test_a_volcano_podgroup_per_generation_owned_by_the_job(min_available: int | None) -> None:
    policy: dict[str, Any] = {
        "schedulerName": "volcano",
        "priorityClassName": "batch-low",
        "podGroup": {"kind": "volcano"},
    }
    if min_available is not None:
        policy["minAvailable"] = min_available
    job = _job(policy)
    plan = plan_job(job)
    group = build_pod_group(job, plan, generation=2)
    assert group is not None
    assert group["apiVersion"] == "scheduling.volcano.sh/v1beta1"
    assert group["kind"] == "PodGroup"
    assert group["metadata"]["name"] == "job-g2"
    assert group["metadata"]["namespace"] == "ns"
    assert group["metadata"]["labels"]["rlhf.dev/generation"] == "2"
    (owner,) = group["metadata"]["ownerReferences"]
    assert owner["uid"] == UID and owner["controller"] is True and owner["kind"] == "RLHFJob"
    assert group["spec"] == {
        "minMember": min_available or plan.world_size,
        "priorityClassName": "batch-low",
    }
    for pod in build_gang(job, plan, generation=2):
        assert pod["metadata"]["annotations"]["scheduling.k8s.io/group-name"] == "job-g2"
        assert "scheduling.x-k8s.io/pod-group" not in pod["metadata"]["labels"]
        # The gate stays in use with a PodGroup (kube/gang.py says why).
        assert gated(pod)


def test_a_coscheduling_podgroup_and_its_label() -> None:
    job = _job(
        {"schedulerName": "scheduler-plugins-scheduler", "podGroup": {"kind": "coscheduling"}}
    )
    plan = plan_job(job)
    group = build_pod_group(job, plan, generation=0)
    assert group is not None
    assert group["apiVersion"] == "scheduling.x-k8s.io/v1alpha1"
    assert group["spec"] == {"minMember": plan.world_size}
    for pod in build_gang(job, plan, generation=0):
        assert pod["metadata"]["labels"]["scheduling.x-k8s.io/pod-group"] == "job-g0"
        assert "scheduling.k8s.io/group-name" not in pod["metadata"]["annotations"]
        assert pod["spec"]["schedulerName"] == "scheduler-plugins-scheduler"
        assert gated(pod)


def test_min_available_needs_a_podgroup_and_at_most_the_gang() -> None:
    with pytest.raises(ValueError, match="minAvailable is the PodGroup's minMember"):
        _job({"minAvailable": 2})
    with pytest.raises(ValueError, match="podGroup.kind"):
        _job({"podGroup": {"kind": "yunikorn"}})
    job = _job({"minAvailable": 99, "podGroup": {"kind": "coscheduling"}})
    with pytest.raises(ValueError, match="minAvailable is 99 but the gang has 6 pods"):
        check_min_available(job, plan_job(job))
    fits = _job({"minAvailable": 6, "podGroup": {"kind": "coscheduling"}})
    check_min_available(fits, plan_job(fits))
