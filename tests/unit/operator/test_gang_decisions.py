"""decide(): the operator's whole policy as a pure function of (job, pods, now)."""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

import pytest
from malformed import base_manifest

from rlhfjob_operator.contract import EXIT_PERMANENT, Backoff
from rlhfjob_operator.kube.decisions import (
    Decision,
    decide,
    format_time,
    invalid_spec,
)
from rlhfjob_operator.kube.manifests import build_gang
from rlhfjob_operator.kube.names import ANNOTATION_EPISODE, ANNOTATION_LAST_CHECKPOINT
from rlhfjob_operator.plan import plan_job
from rlhfjob_operator.spec import RLHFJob, RLHFJobStatus, load_job

T0 = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.timezone.utc)
BACKOFF = Backoff(base_seconds=10, cap_seconds=60)
Pod = dict[str, Any]


class Sim:
    """A job, its pods and the clock; applies decisions as the reconciler would."""

    def __init__(self, **run_policy: Any) -> None:
        m = copy.deepcopy(base_manifest("job"))
        m["metadata"].update(namespace="ns", uid="uid-1", generation=1)
        m["spec"]["runPolicy"] = run_policy
        self.job = load_job(m)
        self.plan = plan_job(self.job)
        self.pods: dict[str, Pod] = {}
        self.now = T0

    @property
    def status(self) -> RLHFJobStatus:
        assert self.job.status is not None
        return self.job.status

    def step(
        self, seconds: float = 0, *, live: Any = None, lost_nodes: frozenset[str] = frozenset()
    ) -> Decision:
        self.now += dt.timedelta(seconds=seconds)
        pods = list(self.pods.values())
        d = decide(
            self.job,
            self.plan,
            pods,
            now=self.now,
            backoff=BACKOFF,
            live=live,
            lost_nodes=lost_nodes,
        )
        self.job = self.job.model_copy(update={"status": d.status})
        for name in d.delete:
            self.pods[name]["metadata"]["deletionTimestamp"] = format_time(self.now)
        gen = d.status.restart_generation
        for pod in build_gang(self.job, self.plan, generation=gen):
            if pod["metadata"]["name"] in d.create:
                self.pods[pod["metadata"]["name"]] = pod
        return d

    def gone(self) -> None:
        """The kubelet confirms every deletion."""
        self.pods = {n: p for n, p in self.pods.items() if "deletionTimestamp" not in p["metadata"]}

    def run_all(self) -> None:
        for pod in self.pods.values():
            if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                continue
            pod["status"] = {
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": "True"}],
            }

    def finish(self, name: str, code: int, reason: str = "Error") -> None:
        self.pods[name]["status"] = {
            "phase": "Succeeded" if code == 0 else "Failed",
            "containerStatuses": [
                {"name": "worker", "state": {"terminated": {"exitCode": code, "reason": reason}}}
            ],
        }

    def cond(self, type_: str) -> str | None:
        c = self.status.condition(type_)  # type: ignore[arg-type]
        return None if c is None else c.status

    def set_policy(self, **changes: Any) -> None:
        spec = self.job.spec.model_copy(
            update={"run_policy": self.job.spec.run_policy.model_copy(update=changes)}
        )
        self.job = self.job.model_copy(update={"spec": spec})


def test_a_new_job_creates_its_gang() -> None:
    sim = Sim()
    d = sim.step()
    assert d.create == tuple(
        p["metadata"]["name"] for p in build_gang(sim.job, sim.plan, generation=0)
    )
    assert sim.status.phase == "Created"
    assert sim.cond("Created") == "True"
    assert sim.status.start_time == format_time(T0)
    assert sim.status.num_episode == 2
    assert sim.status.replicas == 6 and sim.status.ready_replicas == 0
    assert [e.reason for e in d.events] == ["Created"]


def test_deciding_again_on_the_same_observations_changes_nothing() -> None:
    sim = Sim()
    sim.step()
    before = sim.status.model_dump()
    d = sim.step(1)
    assert d.create == () and d.delete == () and d.events == ()
    assert sim.status.model_dump() == before


def test_all_pods_ready_is_running_with_counts() -> None:
    sim = Sim()
    sim.step()
    sim.run_all()
    d = sim.step(1)
    assert sim.status.phase == "Running"
    assert sim.cond("Running") == "True"
    assert sim.status.ready_replicas == 6
    assert sim.status.models["policy"].model_dump() == {"replicas": 2, "ready": 2}
    assert [e.reason for e in d.events] == ["Running"]


def test_a_pod_vanished_before_the_gang_ran_is_recreated_under_its_name() -> None:
    """Not Running yet: the gang has not met, the pod can join it (after that a pod gone
    is a disruption: test_gang_disruptions)."""
    sim = Sim()
    sim.step()
    del sim.pods["job-reward-0-g0"]
    d = sim.step(1)
    assert d.create == ("job-reward-0-g0",) and d.delete == ()
    assert sim.status.phase == "Created"
    assert sim.status.restarts == 0 and sim.status.restart_generation == 0


def test_driver_success_finishes_the_job_and_deletes_the_workers() -> None:
    sim = Sim()
    sim.step()
    sim.run_all()
    sim.step()
    sim.finish("job-driver-g0", 0, "Completed")
    sim.finish("job-reward-0-g0", 1)  # a worker dying after the driver is not a failure
    d = sim.step(5)
    assert sim.status.phase == "Succeeded"
    assert sim.cond("Succeeded") == "True" and sim.cond("Running") == "False"
    assert sim.status.completion_time == format_time(T0 + dt.timedelta(seconds=5))
    assert "job-driver-g0" not in d.delete and "job-policy-0-g0" in d.delete
    assert "job-reward-0-g0" not in d.delete  # finished pods stay for their logs
    assert [e.reason for e in d.events] == ["Succeeded"]
    assert sim.step(1).events == ()


def test_a_failed_pod_restarts_the_whole_gang_after_backoff() -> None:
    sim = Sim(backoffLimit=3)
    sim.step()
    sim.run_all()
    sim.step()
    sim.finish("job-policy-1-g0", 137, "OOMKilled")
    d = sim.step(1)
    assert sim.status.phase == "Restarting"
    assert sim.status.restarts == 1 and sim.status.restart_generation == 1
    assert sim.cond("Restarting") == "True" and sim.cond("Running") == "False"
    # The whole gang goes; the failed pod stays for its logs (it runs nothing).
    assert set(d.delete) == {n for n in sim.pods if n != "job-policy-1-g0"}
    assert d.requeue_after == 10
    (event,) = d.events
    assert event.type == "Warning" and event.reason == "Restarting"
    assert "job-policy-1-g0" in event.message and "137" in event.message
    assert "OOMKilled" in event.message
    # Still in backoff: nothing is created, even once the old pods are gone.
    sim.gone()
    assert sim.step(5).create == ()
    # Backoff over: the next generation.
    d = sim.step(5)
    assert all(name.endswith("-g1") for name in d.create) and len(d.create) == 6
    assert sim.status.next_restart_time is None
    sim.run_all()
    d = sim.step(1)
    assert sim.status.phase == "Running"
    assert sim.cond("Restarting") == "False"


def test_an_abort_is_named_as_a_likely_strangers_bytes_and_restarts_the_gang() -> None:
    sim = Sim(backoffLimit=3)
    sim.step()
    sim.run_all()
    sim.step()
    sim.finish("job-policy-1-g0", 134)  # SIGABRT, as a container runtime reports it
    (event,) = sim.step(1).events
    assert sim.status.phase == "Restarting" and sim.status.restarts == 1
    assert "exit code 134" in event.message
    assert "malformed bytes from a connection outside the job" in event.message
    restarting = sim.status.condition("Restarting")
    assert restarting is not None and "native code aborted" in restarting.message


def test_the_new_gang_waits_until_the_old_one_is_gone() -> None:
    sim = Sim(backoffLimit=3)
    sim.step()
    sim.run_all()
    sim.step()
    sim.finish("job-reward-0-g0", 1)
    sim.step()
    d = sim.step(60)  # backoff over, but the old pods are still terminating
    assert d.create == ()
    assert d.requeue_after is not None
    sim.gone()
    assert len(sim.step().create) == 6


def test_restart_env_carries_the_generation() -> None:
    sim = Sim(backoffLimit=1)
    sim.step()
    sim.finish("job-reward-0-g0", 1)
    sim.step()
    sim.gone()
    sim.step(60)
    env = {
        e["name"]: e.get("value") for e in sim.pods["job-driver-g1"]["spec"]["containers"][0]["env"]
    }
    assert env["RLHFJOB_RESTART_GENERATION"] == "1"


def test_backoff_limit_exhausted_fails_the_job() -> None:
    sim = Sim(backoffLimit=1)
    sim.step()
    sim.finish("job-reward-0-g0", 1)
    sim.step()
    sim.gone()
    sim.step(60)
    sim.finish("job-policy-0-g1", 2)
    d = sim.step(1)
    assert sim.status.phase == "Failed"
    assert sim.status.restarts == 1
    failed = sim.status.condition("Failed")
    assert failed is not None and failed.reason == "BackoffLimitExceeded"
    assert "job-policy-0-g1" in failed.message and "backoffLimit (1)" in failed.message
    assert len(d.delete) == 5
    assert [e.type for e in d.events] == ["Warning"]


def test_backoff_limit_zero_fails_on_the_first_failure() -> None:
    sim = Sim(backoffLimit=0)
    sim.step()
    sim.finish("job-driver-g0", 1)
    sim.step()
    assert sim.status.phase == "Failed" and sim.status.restarts == 0


def test_a_permanent_exit_code_fails_at_once() -> None:
    sim = Sim(backoffLimit=5)
    sim.step()
    sim.finish("job-driver-g0", EXIT_PERMANENT)
    sim.step()
    failed = sim.status.condition("Failed")
    assert failed is not None and failed.reason == "PermanentError"
    assert sim.status.restarts == 0


def test_backoff_is_exponential_and_capped() -> None:
    assert [BACKOFF.delay(n) for n in (1, 2, 3, 4, 5)] == [10, 20, 40, 60, 60]


def test_suspend_deletes_pods_and_keeps_status_then_resume_recreates() -> None:
    sim = Sim()
    sim.step()
    sim.run_all()
    sim.step()
    sim.set_policy(suspend=True)
    d = sim.step(1)
    assert sim.status.phase == "Suspended"
    assert sim.cond("Suspended") == "True" and sim.cond("Running") == "False"
    assert len(d.delete) == 6
    assert [e.reason for e in d.events] == ["Suspended"]
    sim.gone()
    assert sim.step(1).create == ()
    sim.set_policy(suspend=False)
    d = sim.step(100)
    assert sim.cond("Suspended") == "False"
    assert sim.status.restart_generation == 1 and sim.status.restarts == 0
    assert all(n.endswith("-g1") for n in d.create) and len(d.create) == 6
    assert sim.status.start_time == format_time(sim.now)  # the deadline clock restarts
    assert [e.reason for e in d.events] == ["Resumed"]


def test_deadline_fails_the_job() -> None:
    sim = Sim(activeDeadlineSeconds=30)
    d = sim.step()
    assert d.requeue_after == 30
    sim.run_all()
    sim.step(10)
    d = sim.step(25)
    assert sim.status.phase == "Failed"
    failed = sim.status.condition("Failed")
    assert failed is not None and failed.reason == "DeadlineExceeded"
    assert len(d.delete) == 6


def test_ttl_deletes_a_finished_job() -> None:
    sim = Sim(ttlSecondsAfterFinished=60)
    sim.step()
    sim.finish("job-driver-g0", 0)
    sim.step()
    d = sim.step(20)
    assert not d.delete_job and d.requeue_after == pytest.approx(40)
    assert sim.step(40).delete_job


def test_progress_comes_from_the_driver_pod() -> None:
    sim = Sim()
    sim.step()
    sim.run_all()
    sim.pods["job-driver-g0"]["metadata"]["annotations"] = {
        ANNOTATION_EPISODE: "7",
        ANNOTATION_LAST_CHECKPOINT: "/checkpoints/episode-5",
    }
    sim.step()
    assert sim.status.episode == 7
    assert sim.status.last_checkpoint == "/checkpoints/episode-5"


def test_pods_of_another_generation_are_deleted() -> None:
    sim = Sim()
    sim.step()
    stray = copy.deepcopy(sim.pods["job-reward-0-g0"])
    stray["metadata"]["name"] = "job-reward-0-g7"
    stray["metadata"]["labels"]["rlhf.dev/generation"] = "7"
    sim.pods["job-reward-0-g7"] = stray
    d = sim.step()
    assert d.delete == ("job-reward-0-g7",)


def test_invalid_spec_fails_once() -> None:
    d = invalid_spec(None, "invalid spec: x", now=T0)
    assert d.status.phase == "Failed"
    failed = d.status.condition("Failed")
    assert failed is not None and failed.reason == "InvalidSpec"
    assert [e.reason for e in d.events] == ["InvalidSpec"]
    assert invalid_spec(d.status, "invalid spec: x", now=T0).events == ()


def test_conditions_keep_their_transition_time() -> None:
    sim = Sim()
    sim.step()
    created = sim.status.condition("Created")
    sim.run_all()
    sim.step(30)
    again = sim.status.condition("Created")
    assert created is not None and again is not None
    assert again.last_transition_time == created.last_transition_time


def test_job_model_is_not_mutated() -> None:
    sim = Sim()
    job: RLHFJob = sim.job
    decide(job, sim.plan, [], now=T0, backoff=BACKOFF)
    assert job.status is None
