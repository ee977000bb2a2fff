"""decide() where two rules meet in one turn: a driver that succeeded as the deadline
passed, and a job created suspended starting for the first time."""

from __future__ import annotations

from test_gang_decisions import Sim

from rlhfjob_operator.kube.decisions import format_time


def test_a_driver_that_succeeded_as_the_deadline_passed_is_a_success() -> None:
    sim = Sim(activeDeadlineSeconds=30)
    sim.step()
    sim.run_all()
    sim.step(10)
    sim.finish("job-driver-g0", 0, "Completed")
    d = sim.step(25)  # the deadline passed before this turn saw the driver's success
    assert sim.status.phase == "Succeeded"
    succeeded = sim.status.condition("Succeeded")
    assert succeeded is not None and succeeded.reason == "Succeeded"
    assert [e.reason for e in d.events] == ["Succeeded"]


def test_the_first_unsuspend_of_a_job_created_suspended_is_no_restart() -> None:
    sim = Sim(suspend=True)
    d = sim.step()
    assert sim.status.phase == "Suspended" and d.create == ()
    assert sim.status.start_time is None  # suspended from the start: never started
    sim.set_policy(suspend=False)
    d = sim.step(100)
    assert sim.status.restarts == 0 and sim.status.disruptions == 0
    assert sim.status.restart_generation == 0
    assert len(d.create) == 6 and all(n.endswith("-g0") for n in d.create)
    assert sim.status.phase == "Created" and sim.cond("Created") == "True"
    assert sim.cond("Suspended") == "False"
    assert [e.reason for e in d.events] == ["Resumed", "Created"]
    assert sim.status.start_time == format_time(sim.now)
