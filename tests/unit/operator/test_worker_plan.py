"""spec -> workers: ranks, world size, colocation, placement, and the env contract."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from malformed import base_manifest

from rlhfjob_operator.contract import DEFAULT_MASTER_PORT, EXIT_PERMANENT
from rlhfjob_operator.plan import JobPlan, plan_job, role_name
from rlhfjob_operator.spec import RLHFJob, load_job

CONTRACT = {
    "RLHFJOB_JOB_NAME",
    "RLHFJOB_ROLE",
    "RLHFJOB_MODELS",
    "RLHFJOB_REPLICA",
    "RANK",
    "WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "RLHFJOB_SPEC",
    "RLHFJOB_CHECKPOINT_DIR",
    "RLHFJOB_METRICS_PORT",
    "RLHFJOB_RESTART_GENERATION",
}


def _job(edit: Any = None) -> RLHFJob:
    m = copy.deepcopy(base_manifest("job"))
    if edit:
        edit(m)
    return load_job(m)


def _plan(edit: Any = None) -> JobPlan:
    return plan_job(_job(edit))


def test_driver_is_rank_zero_and_every_replica_has_a_worker() -> None:
    plan = _plan()
    assert plan.driver.role == "driver" and plan.driver.rank == 0 and plan.driver.models == ()
    # policy x2, ppo_policy, reference, reward
    assert plan.world_size == 6
    assert [w.rank for w in plan.workers] == list(range(6))
    assert [(w.role, w.replica) for w in plan.workers[1:]] == [
        ("policy", 0),
        ("policy", 1),
        ("ppo_policy", 0),
        ("reference", 0),
        ("reward", 0),
    ]


def test_ranks_do_not_depend_on_the_order_models_are_written_in() -> None:
    def reverse(m: dict[str, Any]) -> None:
        m["spec"]["models"] = dict(reversed(list(m["spec"]["models"].items())))

    assert [(w.role, w.rank) for w in _plan().workers] == [
        (w.role, w.rank) for w in _plan(reverse).workers
    ]


def test_a_colocation_group_shares_one_worker_per_replica() -> None:
    def colocate(m: dict[str, Any]) -> None:
        m["spec"]["runtime"]["colocation"] = [["reward", "reference"]]
        m["spec"]["models"]["reference"]["num_gpu"] = 2

    plan = _plan(colocate)
    group = [w for w in plan.workers if "reference" in w.models]
    assert len(group) == 1
    (worker,) = group
    assert worker.role == "reward-reference"
    assert worker.models == ("reward", "reference")
    assert worker.num_gpu == 2  # the most any member needs: they time-share devices
    assert plan.world_size == 5


def test_role_names_are_dns_safe_and_bounded() -> None:
    assert role_name(["policy"]) == "policy"
    assert role_name(["ppo_policy", "ppo_value"]) == "ppo-policy-ppo-value"
    long = role_name([f"model_{i:02d}_with_a_long_name" for i in range(4)])
    assert len(long) <= 50 and long.replace("-", "").isalnum()
    assert long != role_name([f"model_{i:02d}_with_a_long_name" for i in range(5)])


def test_env_contract() -> None:
    plan = _plan()
    worker = plan.workers[2]
    env = plan.env(
        worker,
        master_addr="driver.job.ns.svc",
        spec_path="/etc/rlhfjob/job.yaml",
        checkpoint_dir="/checkpoints",
        restart_generation=3,
    )
    assert set(env) == CONTRACT
    assert env == {
        "RLHFJOB_JOB_NAME": "job",
        "RLHFJOB_ROLE": "policy",
        "RLHFJOB_MODELS": "policy",
        "RLHFJOB_REPLICA": "1",
        "RANK": "2",
        "WORLD_SIZE": "6",
        "MASTER_ADDR": "driver.job.ns.svc",
        "MASTER_PORT": str(DEFAULT_MASTER_PORT),
        "RLHFJOB_SPEC": "/etc/rlhfjob/job.yaml",
        "RLHFJOB_CHECKPOINT_DIR": "/checkpoints",
        "RLHFJOB_METRICS_PORT": "9090",
        "RLHFJOB_RESTART_GENERATION": "3",
    }
    driver_env = plan.env(
        plan.driver,
        master_addr="127.0.0.1",
        spec_path="job.yaml",
        checkpoint_dir="ckpt",
        restart_generation=0,
        metrics_port=12345,
    )
    assert driver_env["RLHFJOB_ROLE"] == "driver"
    assert driver_env["RLHFJOB_MODELS"] == ""
    assert driver_env["RLHFJOB_METRICS_PORT"] == "12345"


def test_ports_are_the_launchers_choice() -> None:
    plan = plan_job(_job(), master_port=40001, metrics_port=40002)
    env = plan.env(
        plan.driver,
        master_addr="127.0.0.1",
        spec_path="s",
        checkpoint_dir="c",
        restart_generation=0,
    )
    assert env["MASTER_PORT"] == "40001" and env["RLHFJOB_METRICS_PORT"] == "40002"


def test_placement_merges_job_and_role_settings() -> None:
    def place(m: dict[str, Any]) -> None:
        m["spec"]["nodeSelector"] = {"pool": "gpu", "zone": "a"}
        m["spec"]["tolerations"] = [{"key": "gpu", "operator": "Exists"}]
        m["spec"]["models"]["policy"]["pod"] = {
            "image": "policy:1",
            "nodeSelector": {"zone": "b"},
            "tolerations": [{"key": "big", "operator": "Exists"}],
        }
        m["spec"]["driver"] = {"image": "driver:1"}

    plan = _plan(place)
    policy = plan.workers[1]
    assert policy.image == "policy:1"
    assert policy.node_selector == {"pool": "gpu", "zone": "b"}
    assert [t.key for t in policy.tolerations] == ["gpu", "big"]
    assert plan.driver.image == "driver:1"
    assert plan.workers[-1].image == "ghcr.io/rlhfjob/runtime:0.1.0"
    assert plan.workers[-1].node_selector == {"pool": "gpu", "zone": "a"}


@pytest.mark.parametrize(
    ("pod_a", "pod_b", "what"),
    [
        ({"image": "a"}, {"image": "b"}, "images"),
        ({"nodeSelector": {"z": "1"}}, {"nodeSelector": {"z": "2"}}, "nodeSelector"),
        (
            {"resources": {"limits": {"memory": "1Gi"}}},
            {"resources": {"limits": {"memory": "2Gi"}}},
            "resources.limits.memory",
        ),
    ],
)
def test_a_colocation_group_refuses_conflicting_placements(
    pod_a: dict[str, Any], pod_b: dict[str, Any], what: str
) -> None:
    def conflict(m: dict[str, Any]) -> None:
        m["spec"]["runtime"]["colocation"] = [["reference", "reward"]]
        m["spec"]["models"]["reference"]["pod"] = pod_a
        m["spec"]["models"]["reward"]["pod"] = pod_b

    with pytest.raises(ValueError, match=what):
        _plan(conflict)


def test_a_colocation_group_merges_compatible_placements() -> None:
    def merge(m: dict[str, Any]) -> None:
        m["spec"]["runtime"]["colocation"] = [["reference", "reward"]]
        m["spec"]["models"]["reference"]["pod"] = {"resources": {"limits": {"memory": "1Gi"}}}
        m["spec"]["models"]["reward"]["pod"] = {"resources": {"requests": {"memory": "1Gi"}}}

    (worker,) = [w for w in _plan(merge).workers if w.role == "reference-reward"]
    assert worker.resources is not None
    assert worker.resources.limits == {"memory": "1Gi"}
    assert worker.resources.requests == {"memory": "1Gi"}


def test_a_group_role_may_not_clash_with_a_model_name() -> None:
    def clash(m: dict[str, Any]) -> None:
        m["spec"]["runtime"]["colocation"] = [["reference", "reward"]]
        m["spec"]["models"]["reference-reward"] = {}

    with pytest.raises(ValueError, match="clashes"):
        _plan(clash)


def test_exit_code_for_permanent_failures_is_stable() -> None:
    assert EXIT_PERMANENT == 78


def test_contract_module_documents_every_contract_variable() -> None:
    import rlhfjob_operator.contract as contract_module

    doc = contract_module.__doc__ or ""
    for name in CONTRACT:
        assert f"``{name}``" in doc, name
