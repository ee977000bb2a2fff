"""Pure builders: pods, Service, ConfigMap, NetworkPolicy for a job."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from malformed import base_manifest

from rlhfjob_operator.kube.manifests import (
    build_configmap,
    build_gang,
    build_network_policy,
    build_pod,
    build_service,
    master_addr,
)
from rlhfjob_operator.kube.names import (
    LABEL_GENERATION,
    LABEL_JOB,
    LABEL_REPLICA,
    LABEL_ROLE,
    pod_name,
)
from rlhfjob_operator.plan import plan_job
from rlhfjob_operator.spec import RLHFJob, load_job

UID = "0b7c3f4e-1111-2222-3333-444455556666"


def _job(edit: Any = None) -> RLHFJob:
    m = copy.deepcopy(base_manifest("job"))
    m["metadata"].update(namespace="team", uid=UID)
    if edit:
        edit(m)
    return load_job(m)


def _env(pod: dict[str, Any]) -> dict[str, str]:
    # Literal values only: RLHFJOB_JOB_SECRET comes through valueFrom.
    return {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"] if "value" in e}


def test_one_pod_per_worker_named_by_generation() -> None:
    job = _job()
    plan = plan_job(job)
    pods = build_gang(job, plan, generation=2)
    names = [p["metadata"]["name"] for p in pods]
    assert names == [
        "job-driver-g2",
        "job-policy-0-g2",
        "job-policy-1-g2",
        "job-ppo-policy-0-g2",
        "job-reference-0-g2",
        "job-reward-0-g2",
    ]
    assert len(set(names)) == len(names)
    # Deterministic: the same inputs give the same objects.
    assert pods == build_gang(job, plan, generation=2)


def test_labels_owner_and_dns() -> None:
    job = _job()
    plan = plan_job(job)
    pod = build_pod(job, plan, plan.workers[3], generation=1)
    meta = pod["metadata"]
    assert meta["namespace"] == "team"
    assert meta["labels"][LABEL_JOB] == "job"
    assert meta["labels"][LABEL_ROLE] == "ppo_policy"
    assert meta["labels"][LABEL_REPLICA] == "0"
    assert meta["labels"][LABEL_GENERATION] == "1"
    (owner,) = meta["ownerReferences"]
    assert owner == {
        "apiVersion": "rlhf.dev/v1alpha1",
        "kind": "RLHFJob",
        "name": "job",
        "uid": UID,
        "controller": True,
        "blockOwnerDeletion": True,
    }
    # Hostnames carry the generation: the new driver's DNS name never resolves to an
    # old driver still terminating (on a lost node, say).
    assert pod["spec"]["hostname"] == "ppo-policy-0-g1"
    assert pod["spec"]["subdomain"] == "job"
    assert pod["spec"]["restartPolicy"] == "Never"
    env = _env(pod)
    assert env["MASTER_ADDR"] == master_addr(job, plan, generation=1) == "driver-g1.job.team.svc"
    driver = build_pod(job, plan, plan.workers[0], generation=1)
    assert f"{driver['spec']['hostname']}.job.team.svc" == env["MASTER_ADDR"]
    assert env["RLHFJOB_RESTART_GENERATION"] == "1"
    assert env["RANK"] == "3" and env["WORLD_SIZE"] == "6"
    assert env["RLHFJOB_SPEC"] == "/etc/rlhfjob/job.yaml"


def test_a_job_without_uid_cannot_own_objects() -> None:
    m = copy.deepcopy(base_manifest("job"))
    job = load_job(m)
    with pytest.raises(ValueError, match="uid"):
        build_gang(job, plan_job(job), generation=0)


def test_gpu_requests_and_limits_from_num_gpu() -> None:
    def more(m: dict[str, Any]) -> None:
        m["spec"]["models"]["policy"].update(num_gpu=4, num_cpu=8)
        m["spec"]["models"]["policy"]["pod"] = {
            "resources": {"requests": {"memory": "8Gi"}, "limits": {"memory": "16Gi"}}
        }

    job = _job(more)
    plan = plan_job(job)
    policy = build_pod(job, plan, plan.workers[1], generation=0)
    res = policy["spec"]["containers"][0]["resources"]
    assert res == {
        "requests": {"memory": "8Gi", "cpu": "8", "nvidia.com/gpu": "4"},
        "limits": {"memory": "16Gi", "nvidia.com/gpu": "4"},
    }
    reward = build_pod(job, plan, plan.workers[-1], generation=0)
    assert "nvidia.com/gpu" not in str(reward["spec"]["containers"][0]["resources"])


def test_node_selector_and_tolerations() -> None:
    def place(m: dict[str, Any]) -> None:
        m["spec"]["nodeSelector"] = {"nvidia.com/gpu.present": "true"}
        m["spec"]["tolerations"] = [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ]

    job = _job(place)
    plan = plan_job(job)
    pod = build_pod(job, plan, plan.workers[1], generation=0)
    assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["spec"]["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]


def test_security_context_is_locked_down() -> None:
    job = _job()
    plan = plan_job(job)
    for pod in build_gang(job, plan, generation=0):
        spec = pod["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] != 0
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        (container,) = spec["containers"]
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert {"/tmp", "/dev/shm", "/checkpoints", "/etc/rlhfjob"} <= set(mounts)
        assert mounts["/etc/rlhfjob"]["readOnly"] is True
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["checkpoint"] == {"name": "checkpoint", "emptyDir": {}}
        assert volumes["shm"]["emptyDir"] == {"medium": "Memory"}


def test_checkpoint_on_a_claim() -> None:
    def pvc(m: dict[str, Any]) -> None:
        m["spec"]["checkpoint"] = {
            "mountPath": "/ckpt",
            "persistentVolumeClaim": {"claimName": "shared", "subPath": "job"},
        }

    job = _job(pvc)
    plan = plan_job(job)
    pod = build_pod(job, plan, plan.driver, generation=0)
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["checkpoint"]["persistentVolumeClaim"] == {"claimName": "shared"}
    mounts = {m["name"]: m for m in pod["spec"]["containers"][0]["volumeMounts"]}
    assert mounts["checkpoint"] == {"name": "checkpoint", "mountPath": "/ckpt", "subPath": "job"}
    assert _env(pod)["RLHFJOB_CHECKPOINT_DIR"] == "/ckpt"


def test_user_env_comes_after_the_contract() -> None:
    def env(m: dict[str, Any]) -> None:
        m["spec"]["env"] = [{"name": "HF_HOME", "value": "/tmp/hf"}]

    job = _job(env)
    plan = plan_job(job)
    pod = build_pod(job, plan, plan.driver, generation=0)
    assert pod["spec"]["containers"][0]["env"][-1] == {"name": "HF_HOME", "value": "/tmp/hf"}


def test_headless_service_publishes_unready_pods() -> None:
    job = _job()
    svc = build_service(job, plan_job(job))
    assert svc["metadata"]["name"] == "job"
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"] == {LABEL_JOB: "job"}


def test_configmap_holds_a_manifest_the_workers_can_load(tmp_path: Path) -> None:
    job = _job()
    cm = build_configmap(job)
    path = tmp_path / "job.yaml"
    path.write_text(cm["data"]["job.yaml"])
    again = load_job(path)
    assert again.spec == job.spec
    assert again.metadata.namespace == "team"
    assert yaml.safe_load(cm["data"]["job.yaml"])["kind"] == "RLHFJob"


def test_network_policy_admits_only_the_job_and_metrics() -> None:
    job = _job()
    plan = plan_job(job)
    np = build_network_policy(job, plan)["spec"]
    assert np["podSelector"] == {"matchLabels": {LABEL_JOB: "job"}}
    assert np["policyTypes"] == ["Ingress"]
    own, metrics = np["ingress"]
    assert own == {"from": [{"podSelector": {"matchLabels": {LABEL_JOB: "job"}}}]}
    assert "ports" not in own  # torch RPC listens on ephemeral ports
    assert metrics == {"ports": [{"port": plan.metrics_port, "protocol": "TCP"}]}
    assert "from" not in metrics


def test_pod_names_fit_kubernetes_limits() -> None:
    def long(m: dict[str, Any]) -> None:
        m["metadata"]["name"] = "j" * 50
        m["spec"]["models"] = {"m" * 40: {"num_replica": 1}}

    job = _job(long)
    plan = plan_job(job)
    for pod in build_gang(job, plan, generation=999):
        assert len(pod["metadata"]["name"]) <= 253
        assert len(pod["spec"]["hostname"]) <= 63
        assert all(len(v) <= 63 for v in pod["metadata"]["labels"].values())
    assert pod_name("j", plan.driver, generation=0) == "j-driver-g0"
