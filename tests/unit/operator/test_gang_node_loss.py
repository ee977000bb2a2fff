"""A restart whose old pods are stuck Terminating: the next generation waits for them
and says so in its Restarting condition, but not for a pod whose node is not Ready or
that is long past its grace period (status.given_up)."""

from __future__ import annotations

import datetime as dt

from test_gang_decisions import Sim

from rlhfjob_operator.kube.decisions import Decision, format_time
from rlhfjob_operator.kube.status import OVERDUE_SECONDS


def _restarting_on(node_of: dict[str, str]) -> Sim:
    """A gang Running, one pod failed, the backoff over: the old pods are terminating."""
    sim = Sim(backoffLimit=3)
    sim.step()
    for name, pod in sim.pods.items():
        pod["spec"]["nodeName"] = node_of.get(name, "node-a")
    sim.run_all()
    sim.step()
    sim.finish("job-reward-0-g0", 1)
    sim.step()
    return sim


def _message(sim: Sim) -> str:
    cond = sim.status.condition("Restarting")
    assert cond is not None and cond.status == "True"
    assert sim.status.message == cond.message
    return cond.message


def test_the_restarting_condition_names_the_pods_waited_for() -> None:
    sim = _restarting_on({})
    d = sim.step(60)
    assert d.create == ()
    msg = _message(sim)
    assert msg.startswith("waiting for 5 pods of earlier generations to stop: job-driver-g0, ")
    assert sim.status.condition("Restarting").reason == "PodFailed"  # type: ignore[union-attr]
    assert "not waiting" not in msg


def test_pods_on_a_node_that_is_not_ready_are_not_waited_for() -> None:
    lost = {"job-policy-0-g0": "node-b", "job-policy-1-g0": "node-b"}
    sim = _restarting_on(lost)
    d = sim.step(60, lost_nodes=frozenset({"node-b"}))
    msg = _message(sim)
    assert "waiting for 3 pods" in msg
    assert (
        "not waiting for job-policy-0-g0 (its node node-b is not Ready), "
        "job-policy-1-g0 (its node node-b is not Ready)"
    ) in msg
    assert d.create == ()
    # The pods on the live node go; the lost node's stay Terminating: the gang starts.
    for name, pod in list(sim.pods.items()):
        if pod["spec"]["nodeName"] == "node-a":
            del sim.pods[name]
    d = sim.step(lost_nodes=frozenset({"node-b"}))
    assert len(d.create) == 6 and all(n.endswith("-g1") for n in d.create)
    assert {"job-policy-0-g0", "job-policy-1-g0"} <= set(sim.pods)


def _overdue(sim: Sim, seconds: float) -> Decision:
    """Every old pod was due to be gone at ``now``; then ``seconds`` pass."""
    for pod in sim.pods.values():
        if "deletionTimestamp" in pod["metadata"]:
            pod["metadata"]["deletionTimestamp"] = format_time(sim.now)
    return sim.step(seconds)


def test_a_pod_long_past_its_grace_period_is_not_waited_for() -> None:
    sim = _restarting_on({})
    sim.now += dt.timedelta(seconds=60)
    assert _overdue(sim, OVERDUE_SECONDS - 1).create == ()
    assert "waiting for 5 pods" in _message(sim)
    d = sim.step(1)
    assert len(d.create) == 6 and all(n.endswith("-g1") for n in d.create)


def test_a_live_pod_of_an_old_generation_is_always_waited_for() -> None:
    """Only a pod being deleted is given up on; a live one is deleted and waited for,
    even on a lost node (the operator deletes it first)."""
    sim = _restarting_on({})
    sim.pods["job-policy-0-g0"]["metadata"].pop("deletionTimestamp")
    d = sim.step(60 + OVERDUE_SECONDS, lost_nodes=frozenset({"node-a"}))
    assert d.create == () and "job-policy-0-g0" in d.delete
    assert _message(sim) == "waiting for 1 pods of earlier generations to stop: job-policy-0-g0" + (
        "; not waiting for "
        + ", ".join(
            f"{n} (its node node-a is not Ready)"
            for n in sorted(sim.pods)
            if n.endswith("-g0") and n != "job-policy-0-g0" and n != "job-reward-0-g0"
        )
    )
