"""decide() on a generation where several pods failed: which one speaks for it
(kube/rootcause.py). Pod names sort driver < policy-* < reward-*, so each case puts
the pod that must speak after a pod that must not, by name."""

from __future__ import annotations

import datetime as dt

from test_gang_decisions import T0, Sim

from rlhfjob_operator.contract import EXIT_PERMANENT, EXIT_RETRYABLE
from rlhfjob_operator.kube.decisions import format_time
from rlhfjob_operator.kube.rootcause import root_cause


def running() -> Sim:
    sim = Sim(backoffLimit=3)
    sim.step()
    sim.run_all()
    sim.step()
    assert sim.status.phase == "Running"
    return sim


def fail(sim: Sim, name: str, code: int, *, after: float | None) -> None:
    """The pod's container ended with ``code``, ``after`` seconds past T0 (None: the
    kubelet gave no finishedAt)."""
    sim.finish(name, code)
    if after is not None:
        term = sim.pods[name]["status"]["containerStatuses"][0]["state"]["terminated"]
        term["finishedAt"] = format_time(T0 + dt.timedelta(seconds=after))


def test_an_exit_78_anywhere_fails_the_job_whatever_the_pod_names() -> None:
    sim = running()
    fail(sim, "job-driver-g0", EXIT_RETRYABLE, after=3)
    fail(sim, "job-policy-0-g0", EXIT_RETRYABLE, after=1)
    fail(sim, "job-reward-0-g0", EXIT_PERMANENT, after=5)  # last by name and by time
    d = sim.step(10)
    assert sim.status.phase == "Failed" and sim.status.restarts == 0
    (event,) = d.events
    assert event.type == "Warning" and "pod job-reward-0-g0 failed (exit code 78" in event.message


def test_the_earliest_finished_failure_that_is_not_75_is_the_root_cause() -> None:
    sim = running()
    fail(sim, "job-driver-g0", EXIT_RETRYABLE, after=1)  # first of all, but a 75
    fail(sim, "job-policy-1-g0", 1, after=4)
    fail(sim, "job-reward-0-g0", 137, after=2)  # the first non-75 to finish
    d = sim.step(10)
    assert sim.status.phase == "Restarting" and sim.status.restarts == 1
    (event,) = d.events
    assert event.message.startswith("pod job-reward-0-g0 failed (exit code 137")


def test_only_75s_the_earliest_speaks_and_pods_without_times_come_last() -> None:
    sim = running()
    fail(sim, "job-driver-g0", EXIT_RETRYABLE, after=None)
    fail(sim, "job-reward-0-g0", EXIT_RETRYABLE, after=7)
    fail(sim, "job-policy-0-g0", EXIT_RETRYABLE, after=9)
    (event,) = sim.step(10).events
    assert event.message.startswith("pod job-reward-0-g0 failed (exit code 75")


def test_root_cause_does_not_depend_on_the_listing_order() -> None:
    sim = running()
    fail(sim, "job-policy-0-g0", 2, after=None)
    fail(sim, "job-reward-0-g0", 2, after=None)
    pods = [sim.pods["job-reward-0-g0"], sim.pods["job-policy-0-g0"]]
    assert root_cause(pods) is root_cause(reversed(pods)) is sim.pods["job-policy-0-g0"]
    assert root_cause([]) is None
