"""runPolicy.failurePolicy (spec/failure.py): the rules' matching, their defaults, and
what decide() does with each action on pods of a gang (issue 14)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_gang_decisions import Sim
from test_gang_disruptions import evict, running

from rlhfjob_operator.contract import EXIT_DISRUPTED, EXIT_PERMANENT, Backoff, Final, Retry
from rlhfjob_operator.kube.kueue import ADMISSION_GATE, QUEUE_LABEL
from rlhfjob_operator.kube.names import LABEL_ROLE
from rlhfjob_operator.spec import SpecError
from rlhfjob_operator.spec.failure import DEFAULT_RULES, FailureRule, attempt, first_match

FAST = Backoff(base_seconds=1, cap_seconds=4)


def rule(action: str, **match: Any) -> dict[str, Any]:
    return {"action": action, **match}


def codes(op: str, *values: int, role: str | None = None) -> dict[str, Any]:
    narrowed = {"role": role} if role else {}
    return {"onExitCodes": {"operator": op, "values": list(values), **narrowed}}


def rules(*raw: dict[str, Any]) -> list[FailureRule]:
    return [FailureRule.model_validate(r) for r in raw]


def policy(*raw: dict[str, Any]) -> dict[str, Any]:
    return {"failurePolicy": {"rules": list(raw)}}


def action(job_rules: list[FailureRule], *, code: int | None = None, **kw: Any) -> str:
    names = kw.pop("names", {"reward"})
    conditions = kw.pop("conditions", {})
    return first_match(job_rules, names=names, code=code, conditions=conditions).describe()


def test_without_rules_the_defaults_speak() -> None:
    assert action([], code=EXIT_PERMANENT) == "FailJob by default"
    assert action([], code=EXIT_DISRUPTED) == "RestartNotCounting by default"
    assert action([], conditions={"DisruptionTarget": "True"}) == "RestartNotCounting by default"
    assert action([], conditions={"DisruptionTarget": "False"}, code=1) == "Restart by default"
    assert action([], code=None) == "Restart by default"  # failed without an exit code
    assert len(DEFAULT_RULES) == 3


def test_the_jobs_rules_come_first_in_order_and_can_override_a_default() -> None:
    job = rules(
        rule("Restart", **codes("In", EXIT_PERMANENT)),
        rule("FailJob", **codes("NotIn", 75)),
        rule("RestartNotCounting", **codes("In", 1)),  # never reached: rule 2 matches 1
    )
    assert action(job, code=EXIT_PERMANENT) == "Restart by runPolicy.failurePolicy.rules[0]"
    assert action(job, code=1) == "FailJob by runPolicy.failurePolicy.rules[1]"
    assert action(job, code=75) == "Restart by default"
    assert action(job, code=None) == "Restart by default"  # an exit-code rule needs a code


def test_a_role_narrows_an_exit_code_rule_and_a_colocated_pod_matches_each_model() -> None:
    job = rules(rule("FailJob", **codes("In", 3, role="reward")))
    assert action(job, code=3, names={"reward"}).startswith("FailJob by runPolicy")
    assert action(job, code=3, names={"policy"}) == "Restart by default"
    assert action(job, code=3, names={"policy-reward", "policy", "reward"}).startswith("FailJob")


def test_a_condition_rule_matches_its_status() -> None:
    job = rules(
        rule("FailJob", onPodConditions=[{"type": "ConfigIssue"}, {"type": "X", "status": "False"}])
    )
    assert action(job, conditions={"ConfigIssue": "True"}).startswith("FailJob by")
    assert action(job, conditions={"X": "False"}).startswith("FailJob by")
    assert action(job, conditions={"ConfigIssue": "False", "X": "True"}) == "Restart by default"


def test_each_action_is_an_attempt() -> None:
    def after(raw: dict[str, Any], restarts: int = 0, limit: int = 3) -> Retry | Final:
        match = first_match(rules(raw), names={"reward"}, code=3, conditions={})
        return attempt(match, restarts=restarts, limit=limit, backoff=FAST)

    failed = after(rule("FailJob", **codes("In", 3)))
    assert isinstance(failed, Final) and failed.reason == "FailurePolicy"
    assert "rules[0]" in failed.why
    assert after(rule("RestartNotCounting", **codes("In", 3)), restarts=3) == Retry(0.0, False)
    assert after(rule("Restart", **codes("In", 3)), restarts=1) == Retry(2.0)
    spent = after(rule("Restart", **codes("In", 3)), restarts=3)
    assert isinstance(spent, Final) and spent.reason == "BackoffLimitExceeded"


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ({"action": "FailJob"}, "onExitCodes or onPodConditions"),
        (rule("FailJob", **codes("In", 0)), "must not list 0"),
        (rule("FailJob", **codes("In", 256)), "less than or equal to 255"),
        (rule("Ignore", **codes("In", 3)), "action"),
        (rule("FailJob", **codes("In", 3, role="critic")), "onExitCodes.role"),
    ],
)
def test_a_bad_rule_is_refused_naming_what_to_fix(raw: dict[str, Any], says: str) -> None:
    with pytest.raises(SpecError, match=says):
        Sim(**policy(raw))


def _pod_of(sim: Sim, role: str) -> str:
    return next(n for n, p in sim.pods.items() if p["metadata"]["labels"][LABEL_ROLE] == role)


def test_a_fail_job_rule_for_one_role_fails_the_job_on_its_exit_code() -> None:
    sim = running(backoffLimit=5, **policy(rule("FailJob", **codes("In", 3, role="reward"))))
    reward = _pod_of(sim, "reward")
    sim.finish(reward, 3)
    d = sim.step(1)
    failed = sim.status.condition("Failed")
    assert sim.status.phase == "Failed" and failed is not None
    assert failed.reason == "FailurePolicy" and sim.status.restarts == 0
    assert f"pod {reward} failed (exit code 3" in failed.message
    assert "FailJob by runPolicy.failurePolicy.rules[0]" in failed.message
    assert len(d.delete) == len(sim.pods) - 1  # every pod but the failed one goes


def test_the_same_exit_code_of_another_role_restarts_counted() -> None:
    sim = running(backoffLimit=5, **policy(rule("FailJob", **codes("In", 3, role="reward"))))
    sim.finish(_pod_of(sim, "reference"), 3)
    sim.step(1)
    assert sim.status.phase == "Restarting"
    assert sim.status.restarts == 1 and sim.status.disruptions == 0


def test_a_restart_not_counting_rule_spends_nothing_and_waits_no_backoff() -> None:
    sim = running(backoffLimit=0, **policy(rule("RestartNotCounting", **codes("In", 1))))
    sim.finish(_pod_of(sim, "reward"), 1)
    sim.step(1)
    assert sim.status.phase == "Restarting"
    assert sim.status.restarts == 0 and sim.status.disruptions == 1
    assert sim.status.next_restart_time is not None
    assert "RestartNotCounting by runPolicy.failurePolicy.rules[0]" in (sim.status.message or "")


def test_a_rule_on_the_disruption_condition_can_fail_the_job_on_an_eviction() -> None:
    sim = running(**policy(rule("FailJob", onPodConditions=[{"type": "DisruptionTarget"}])))
    evict(sim, _pod_of(sim, "reward"))
    sim.step(1)
    failed = sim.status.condition("Failed")
    assert sim.status.phase == "Failed" and failed is not None
    assert failed.reason == "FailurePolicy" and "disrupted (EvictionByEvictionAPI" in failed.message


def test_a_pod_deleted_by_hand_still_restarts_uncounted_under_exit_code_rules() -> None:
    sim = running(backoffLimit=0, **policy(rule("FailJob", **codes("NotIn", 75))))
    name = _pod_of(sim, "reward")
    sim.pods[name]["metadata"]["deletionTimestamp"] = "2026-01-01T12:00:00Z"
    sim.step(1)
    assert sim.status.phase == "Restarting" and sim.status.disruptions == 1


def test_the_readmes_example_is_a_valid_policy_that_does_what_it_says() -> None:
    readme = (Path(__file__).parents[3] / "README.md").read_text()
    section = readme.split("### The failure policy", 1)[1]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    sim = running(**yaml.safe_load(block)["runPolicy"])
    sim.finish(_pod_of(sim, "reward"), 3)
    sim.step(1)
    assert sim.status.phase == "Failed"


UNSCHEDULABLE = {
    "phase": "Pending",
    "conditions": [
        {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
        }
    ],
}


def _starting(**run_policy: Any) -> tuple[Sim, str]:
    """A gang created, all running but the reward pod, which the scheduler cannot place."""
    sim = Sim(startupTimeoutSeconds=30, backoffLimit=2, **run_policy)
    d = sim.step()
    assert d.requeue_after == 30.0  # the operator wakes for the deadline
    sim.run_all()
    reward = _pod_of(sim, "reward")
    sim.pods[reward]["status"] = copy.deepcopy(UNSCHEDULABLE)
    return sim, reward


def test_a_gang_not_running_in_time_restarts_counted_naming_the_pod_and_why() -> None:
    sim, reward = _starting()
    sim.step(29)
    assert sim.status.phase == "Created" and sim.status.restarts == 0
    d = sim.step(1)
    restarting = sim.status.condition("Restarting")
    assert sim.status.phase == "Restarting" and sim.status.restarts == 1
    assert restarting is not None and restarting.reason == "StartupTimeout"
    assert f"pod {reward} not running 30s after its gang was created" in restarting.message
    assert "Unschedulable: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu." in (
        restarting.message
    )
    assert len(d.delete) == len(sim.pods)
    assert sim.status.startup_deadline is None  # the next generation sets its own


def test_a_condition_rule_fails_the_job_on_a_startup_timeout() -> None:
    unschedulable = [{"type": "PodScheduled", "status": "False"}]
    sim, reward = _starting(**policy(rule("FailJob", onPodConditions=unschedulable)))
    sim.step(30)
    failed = sim.status.condition("Failed")
    assert sim.status.phase == "Failed" and failed is not None
    assert failed.reason == "FailurePolicy" and f"pod {reward} not running" in failed.message


def test_an_image_that_cannot_be_pulled_is_named() -> None:
    sim, reward = _starting()
    sim.pods[reward]["status"] = {
        "phase": "Pending",
        "containerStatuses": [
            {
                "name": "worker",
                "state": {"waiting": {"reason": "ImagePullBackOff", "message": "pull 'x' failed"}},
            }
        ],
    }
    sim.step(30)
    assert "container worker waiting: ImagePullBackOff: pull 'x' failed" in (
        sim.status.message or ""
    )


def test_a_running_gang_has_no_startup_deadline_and_a_pod_going_unready_is_not_one() -> None:
    sim, reward = _starting()
    sim.run_all()
    sim.step(5)
    assert sim.status.phase == "Running" and sim.status.startup_deadline is None
    sim.pods[reward]["status"] = copy.deepcopy(UNSCHEDULABLE)
    sim.step(3600)
    assert sim.status.phase == "Created" and sim.status.restarts == 0


def test_without_a_startup_timeout_a_pending_gang_waits() -> None:
    sim = Sim(backoffLimit=2)
    sim.step()
    sim.step(3600)
    assert sim.status.phase == "Created" and sim.status.startup_deadline is None


def test_time_queued_for_kueues_admission_is_not_startup_time() -> None:
    sim = Sim(startupTimeoutSeconds=30)
    sim.job.metadata.labels[QUEUE_LABEL] = "team-a"
    sim.step()
    for pod in sim.pods.values():
        pod["spec"]["schedulingGates"] = [{"name": ADMISSION_GATE}]
    sim.step(600)  # queued ten minutes: the deadline moves with it
    assert sim.status.phase == "Created" and sim.status.restarts == 0
    for pod in sim.pods.values():
        pod["spec"]["schedulingGates"] = []  # admitted
    sim.step(29)
    assert sim.status.phase == "Created"
    sim.step(2)
    assert sim.status.phase == "Restarting"
