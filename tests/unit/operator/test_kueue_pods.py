"""A job labelled with a Kueue queue: each generation's pods form one Kueue pod group,
the operator waits for Kueue's admission, and every generation it leaves is marked
unretriable so Kueue frees its quota (pure, no server: kube/kueue.py)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from test_gang_decisions import Sim

from rlhfjob_operator.kube.kueue import (
    ADMISSION_GATE,
    GROUP_LABEL,
    PRIORITY_LABEL,
    QUEUE_LABEL,
    RETRIABLE_ANNOTATION,
    TOTAL_COUNT_ANNOTATION,
)
from rlhfjob_operator.kube.manifests import build_gang
from rlhfjob_operator.kube.names import SCHEDULING_GATE

# Kueue preempting a workload of pods: the condition on each pod, then a deletion.
PREEMPTED = {
    "type": "TerminationTarget",
    "status": "True",
    "reason": "Preempted",
    "message": "Preempted to accommodate a workload (UID: 1) due to prioritization",
}


def queued(**labels: str) -> Sim:
    sim = Sim()
    sim.job.metadata.labels.update({QUEUE_LABEL: "team-a", **labels})
    return sim


def kueue_gates(sim: Sim) -> None:
    """What Kueue's pod webhook does to every pod it manages as it is created."""
    for pod in sim.pods.values():
        pod["spec"]["schedulingGates"].append({"name": ADMISSION_GATE})


def lift(sim: Sim, gate: str, names: Iterable[str]) -> None:
    for name in names:
        gates = sim.pods[name]["spec"]["schedulingGates"]
        sim.pods[name]["spec"]["schedulingGates"] = [g for g in gates if g["name"] != gate]


def admit(sim: Sim) -> None:
    """What Kueue does on admission: its gate lifted (the operator lifts its own)."""
    lift(sim, ADMISSION_GATE, sim.pods)


def annotate(sim: Sim, names: tuple[str, ...]) -> None:
    for name in names:
        sim.pods[name]["metadata"]["annotations"][RETRIABLE_ANNOTATION] = "false"


def lift_own_gates(sim: Sim, names: tuple[str, ...]) -> None:
    lift(sim, SCHEDULING_GATE, names)


def running(sim: Sim) -> None:
    d = sim.step()
    kueue_gates(sim)
    lift_own_gates(sim, sim.step().ungate)
    admit(sim)
    sim.run_all()
    sim.step()
    assert sim.status.phase == "Running", sim.status
    assert d.retire == ()


def gen_names(sim: Sim, gen: int) -> set[str]:
    return {n for n in sim.pods if n.endswith(f"-g{gen}")}


def test_each_generation_is_one_pod_group_of_the_gangs_size_in_the_jobs_queue() -> None:
    sim = queued(**{PRIORITY_LABEL: "high"})
    for gen in (0, 3):
        for pod in build_gang(sim.job, sim.plan, generation=gen):
            labels, annotations = pod["metadata"]["labels"], pod["metadata"]["annotations"]
            assert labels[QUEUE_LABEL] == "team-a"
            assert labels[GROUP_LABEL] == f"job-g{gen}"
            assert labels[PRIORITY_LABEL] == "high"
            assert annotations[TOTAL_COUNT_ANNOTATION] == str(sim.plan.world_size) == "6"
            assert RETRIABLE_ANNOTATION not in annotations
            assert pod["spec"]["schedulingGates"] == [{"name": SCHEDULING_GATE}]


def test_a_job_without_a_queue_has_no_kueue_labels_and_never_retires_pods() -> None:
    sim = Sim()
    for pod in build_gang(sim.job, sim.plan, generation=0):
        meta: dict[str, Any] = pod["metadata"]
        assert not [k for k in {**meta["labels"], **meta["annotations"]} if "kueue" in k]
    sim.step()
    sim.run_all()
    sim.step()
    sim.finish("job-policy-0-g0", 1)
    d = sim.step()
    assert d.delete and d.retire == ()


def test_the_gang_waits_for_kueues_admission_and_says_so() -> None:
    sim = queued()
    sim.step()
    kueue_gates(sim)
    d = sim.step()
    # Every pod exists: the operator lifts its own gate; Kueue's stays until admission.
    assert set(d.ungate) == gen_names(sim, 0)
    lift_own_gates(sim, d.ungate)
    sim.step()
    assert sim.status.phase == "Created"
    assert sim.status.message == "waiting for Kueue to admit the gang (queue team-a)"
    admit(sim)
    sim.run_all()
    sim.step()
    assert sim.status.phase == "Running"
    assert sim.status.message == "all 6 pods running (generation 0)"


def test_a_failed_generation_is_marked_unretriable_before_its_pods_are_deleted() -> None:
    sim = queued()
    running(sim)
    sim.finish("job-policy-0-g0", 1)
    d = sim.step()
    assert sim.status.phase == "Restarting" and sim.status.restart_generation == 1
    # The failed pod (kept for its logs) too: Kueue would wait for its replacement.
    assert set(d.retire) == gen_names(sim, 0)
    assert set(d.delete) < set(d.retire)
    annotate(sim, d.retire)
    assert sim.step(1).retire == ()  # once is enough
    sim.gone()
    d = sim.step(60)
    assert d.create and all(n.endswith("-g1") for n in d.create)
    assert d.retire == ()  # the failed pod of g0 is annotated already


def test_kueues_preemption_restarts_uncounted_and_frees_the_old_groups_quota() -> None:
    sim = queued()
    running(sim)
    for pod in sim.pods.values():
        pod["status"]["conditions"].append(PREEMPTED)
        pod["metadata"]["deletionTimestamp"] = "2026-01-01T12:00:00Z"
    d = sim.step()
    assert sim.status.phase == "Restarting"
    assert sim.status.restarts == 0 and sim.status.restart_generation == 1
    assert sim.status.message.endswith(", disrupted (not counted)")
    assert set(d.retire) == gen_names(sim, 0)


def test_a_finished_or_suspended_job_releases_its_pods_group() -> None:
    sim = queued()
    running(sim)
    sim.finish("job-driver-g0", 0)
    d = sim.step()
    assert sim.status.phase == "Succeeded"
    assert set(d.retire) == gen_names(sim, 0)

    sim = queued()
    running(sim)
    sim.set_policy(suspend=True)
    d = sim.step()
    assert sim.status.phase == "Suspended"
    assert set(d.retire) == set(d.delete) == gen_names(sim, 0)
