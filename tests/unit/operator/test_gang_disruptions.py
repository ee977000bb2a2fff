"""decide() on a disrupted gang: a pod evicted, preempted, deleted or gone while the gang
runs, and a driver that stopped with an emergency checkpoint (exit 79). The whole gang
goes at once and the next generation starts without a backoff and uncounted."""

from __future__ import annotations

import pytest
from test_gang_decisions import T0, Sim

from rlhfjob_operator.contract import EXIT_DISRUPTED, EXIT_RETRYABLE
from rlhfjob_operator.kube.decisions import Decision, format_time

EVICTED = {
    "type": "DisruptionTarget",
    "status": "True",
    "reason": "EvictionByEvictionAPI",
    "message": "Eviction API: evicting",
}


def running(**run_policy: int) -> Sim:
    sim = Sim(**run_policy)
    sim.step()
    sim.run_all()
    sim.step()
    assert sim.status.phase == "Running"
    return sim


def evict(sim: Sim, name: str) -> None:
    """What the API server does on POST pods/<name>/eviction: a graceful deletion and
    the DisruptionTarget condition."""
    pod = sim.pods[name]
    pod["metadata"]["deletionTimestamp"] = format_time(sim.now)
    pod["status"]["conditions"] = [*pod["status"]["conditions"], EVICTED]


def assert_restarted_uncounted(sim: Sim, d: Decision, *, gone: str) -> None:
    """The gang of generation 0 is deleted, generation 1 is next, at once, uncounted."""
    assert sim.status.phase == "Restarting"
    assert sim.status.restarts == 0 and sim.status.restart_generation == 1
    assert sim.status.next_restart_time == format_time(sim.now)
    assert d.create == () and d.requeue_after == 0
    live = {n for n, p in sim.pods.items() if p["status"].get("phase") == "Running"}
    assert set(d.delete) == live - {gone}
    (event,) = d.events
    assert (event.type, event.reason) == ("Normal", "Restarting")
    assert event.message.startswith(f"pod {gone} disrupted (")
    assert event.message.endswith(" in 0s, disrupted (not counted)")
    assert sim.status.message == event.message
    restarting = sim.status.condition("Restarting")
    assert restarting is not None and restarting.reason == "PodDisrupted"


def assert_next_generation_starts_once_the_old_is_gone(sim: Sim) -> None:
    assert sim.step(1).create == ()  # the old pods are still terminating
    sim.gone()
    d = sim.step(0)
    assert len(d.create) == 6 and all(n.endswith("-g1") for n in d.create)
    assert sim.status.restarts == 0


def test_an_evicted_pod_restarts_the_whole_gang_at_once_uncounted() -> None:
    sim = running(backoffLimit=0)  # no restart to spend: a counted one would fail the job
    evict(sim, "job-reward-0-g0")
    d = sim.step(1)
    assert_restarted_uncounted(sim, d, gone="job-reward-0-g0")
    assert "(EvictionByEvictionAPI: Eviction API: evicting)" in d.events[0].message
    # Deciding again on the same pods: the old generation is stale now, nothing more.
    again = sim.step(0)
    assert again.events == () and sim.status.restart_generation == 1
    assert_next_generation_starts_once_the_old_is_gone(sim)


def test_disruptions_are_counted_apart_from_restarts() -> None:
    sim = running(backoffLimit=3)
    evict(sim, "job-policy-0-g0")
    sim.step(1)
    assert (sim.status.restarts, sim.status.disruptions) == (0, 1)
    sim.gone()
    sim.step(0)
    sim.run_all()
    sim.step(1)
    sim.finish("job-policy-0-g1", EXIT_RETRYABLE)
    sim.step(1)
    assert (sim.status.restarts, sim.status.disruptions) == (1, 1)


def test_an_evicted_driver_is_not_a_success_when_the_workers_exit_0() -> None:
    """The driver stops with an emergency checkpoint and its workers end with 0; its pod
    goes without a terminal phase (or Failed with 79): the job goes on."""
    sim = running()
    evict(sim, "job-driver-g0")
    for name in sim.pods:
        if name != "job-driver-g0":
            sim.finish(name, 0, "Completed")
    d = sim.step(1)
    assert sim.status.phase == "Restarting" and sim.status.restart_generation == 1
    assert sim.status.restarts == 0 and sim.cond("Succeeded") is None
    assert d.delete == ()  # every other pod ended already
    del sim.pods["job-driver-g0"]  # the finished workers stay for their logs
    d = sim.step(0)
    assert len(d.create) == 6 and all(n.endswith("-g1") for n in d.create)


@pytest.mark.parametrize("others", [None, 0])
def test_a_driver_exiting_79_restarts_uncounted_and_is_not_a_success(others: int | None) -> None:
    """79 whichever process took the SIGTERM (the driver returns it on Disrupted); the
    workers still running, or all ended with 0."""
    sim = running(backoffLimit=0)
    sim.finish("job-driver-g0", EXIT_DISRUPTED)
    if others is not None:
        for name in sim.pods:
            if name != "job-driver-g0":
                sim.finish(name, others, "Completed")
    d = sim.step(1)
    assert sim.status.phase == "Restarting" and sim.cond("Succeeded") is None
    assert sim.status.restarts == 0 and sim.status.restart_generation == 1
    assert d.requeue_after == 0
    (event,) = d.events
    assert event.message.startswith("pod job-driver-g0 failed (exit code 79: Error)")
    assert event.message.endswith(", disrupted (not counted)")
    if others is None:
        assert_next_generation_starts_once_the_old_is_gone(sim)
    else:  # nothing left to wait for: finished pods stay for their logs
        assert len(sim.step(0).create) == 6


def test_a_pod_gone_while_the_others_run_is_not_recreated_into_the_old_gang() -> None:
    """Deleted with grace 0 (or while the operator was away): the gang it met cannot take
    it back."""
    sim = running()
    del sim.pods["job-policy-1-g0"]
    d = sim.step(1)
    assert "job-policy-1-g0" not in d.create
    assert_restarted_uncounted(sim, d, gone="job-policy-1-g0")
    assert "(gone)" in d.events[0].message
    assert_next_generation_starts_once_the_old_is_gone(sim)


def test_a_pod_deleted_by_hand_is_a_disruption() -> None:
    sim = running()
    sim.pods["job-policy-0-g0"]["metadata"]["deletionTimestamp"] = format_time(T0)
    d = sim.step(1)
    assert_restarted_uncounted(sim, d, gone="job-policy-0-g0")
    assert "(being deleted)" in d.events[0].message


def test_a_disruption_wins_over_a_failure_seen_with_it() -> None:
    """A peer of the evicted pod failing (its heartbeat lost the pod) is its consequence."""
    sim = running(backoffLimit=0)
    evict(sim, "job-reward-0-g0")
    sim.finish("job-policy-0-g0", EXIT_RETRYABLE)
    d = sim.step(1)
    assert sim.status.phase == "Restarting" and sim.cond("Failed") is None
    assert sim.status.restarts == 0
    assert d.events[0].message.startswith("pod job-reward-0-g0 disrupted (")


def test_a_driver_that_finished_wins_over_a_disruption() -> None:
    sim = running()
    evict(sim, "job-reward-0-g0")
    sim.finish("job-driver-g0", 0, "Completed")
    sim.step(1)
    assert sim.status.phase == "Succeeded"
