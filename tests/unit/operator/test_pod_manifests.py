"""The merged pod settings in the rendered pods: spec.podTemplate, per-role overrides,
runPolicy.terminationGracePeriodSeconds, and rlhfjob's own labels and env kept."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest
from malformed import base_manifest

from rlhfjob_operator.kube.manifests import build_gang, build_pod
from rlhfjob_operator.plan import plan_job
from rlhfjob_operator.spec import RLHFJob, load_job
from rlhfjob_operator.spec.env import reserved_env

UID = "0b7c3f4e-1111-2222-3333-444455556666"
_HUB = {"secretKeyRef": {"name": "hub", "key": "token"}}
_WEIGHTS = {"name": "weights", "persistentVolumeClaim": {"claimName": "weights", "readOnly": True}}


def _job(**spec: Any) -> RLHFJob:
    m = copy.deepcopy(base_manifest("job"))
    m["metadata"].update(namespace="team", uid=UID)
    for key, value in spec.items():
        if key == "policy_pod":
            m["spec"]["models"]["policy"]["pod"] = value
        else:
            m["spec"][key] = value
    return load_job(m)


def _customised() -> RLHFJob:
    return _job(
        env=[{"name": "HF_HOME", "value": "/tmp/hf"}, {"name": "LEVEL", "value": "spec"}],
        nodeSelector={"pool": "gpu"},
        tolerations=[{"key": "gpu", "operator": "Exists"}],
        podTemplate={
            "serviceAccountName": "trainer",
            "imagePullSecrets": [{"name": "registry"}],
            "env": [{"name": "HF_TOKEN", "valueFrom": _HUB}, {"name": "LEVEL", "value": "all"}],
            "envFrom": [{"secretRef": {"name": "s3"}}],
            "volumes": [_WEIGHTS],
            "volumeMounts": [{"name": "weights", "mountPath": "/models", "readOnly": True}],
            "labels": {"team": "rl"},
            "annotations": {"example.com/owner": "rl"},
            "priorityClassName": "batch",
        },
        driver={
            "resources": {"requests": {"cpu": "2", "memory": "4Gi"}},
            "env": [{"name": "LEVEL", "value": "driver"}],
            "labels": {"team": "driver"},
        },
        policy_pod={
            "serviceAccountName": "policy",
            "tolerations": [{"key": "spot", "operator": "Exists"}],
            "affinity": {"podAntiAffinity": {"x": 1}},
            "volumes": [{"name": "cache", "emptyDir": {}}],
            "volumeMounts": [{"name": "cache", "mountPath": "/cache"}],
            "priorityClassName": "high",
        },
    )


def _pods(job: RLHFJob) -> dict[str, dict[str, Any]]:
    """Replica 0's pod of each role, by role."""
    gang = build_gang(job, plan_job(job), generation=0)
    return {p["metadata"]["labels"]["rlhf.dev/role"]: p for p in reversed(gang)}


def _user_env(pod: dict[str, Any]) -> list[dict[str, Any]]:
    """The container's env without rlhfjob's own (contract.RESERVED_ENV, RLHFJOB_*)."""
    (container,) = pod["spec"]["containers"]
    return [e for e in container["env"] if reserved_env([e["name"]]) is None]


def test_the_driver_gets_the_template_and_its_own_settings() -> None:
    pod = _pods(_customised())["driver"]
    spec, (container,) = pod["spec"], pod["spec"]["containers"]
    assert spec["serviceAccountName"] == "trainer"
    assert spec["automountServiceAccountToken"] is False  # a named account still gets no token
    assert spec["priorityClassName"] == "batch"
    assert spec["imagePullSecrets"] == [{"name": "registry"}]
    assert "affinity" not in spec
    assert spec["nodeSelector"] == {"pool": "gpu"}
    assert spec["tolerations"] == [{"key": "gpu", "operator": "Exists"}]
    assert _user_env(pod) == [
        {"name": "HF_HOME", "value": "/tmp/hf"},
        {"name": "LEVEL", "value": "driver"},  # spec.env < podTemplate < driver, in place
        {"name": "HF_TOKEN", "valueFrom": _HUB},
    ]
    assert container["envFrom"] == [{"secretRef": {"name": "s3"}}]
    assert container["resources"] == {"requests": {"cpu": "2", "memory": "4Gi"}}
    assert container["volumeMounts"][-1] == {
        "name": "weights",
        "mountPath": "/models",
        "readOnly": True,
    }
    assert spec["volumes"][-1] == _WEIGHTS
    assert pod["metadata"]["labels"]["team"] == "driver"
    assert pod["metadata"]["annotations"] == {"example.com/owner": "rl", "rlhf.dev/models": ""}


def test_a_model_role_gets_the_template_under_its_own_pod() -> None:
    pods = _pods(_customised())
    pod = pods["policy"]
    spec, (container,) = pod["spec"], pod["spec"]["containers"]
    assert spec["serviceAccountName"] == "policy"
    assert spec["priorityClassName"] == "high"
    assert spec["affinity"] == {"podAntiAffinity": {"x": 1}}
    assert [t["key"] for t in spec["tolerations"]] == ["gpu", "spot"]
    assert [v["name"] for v in spec["volumes"]][-2:] == ["weights", "cache"]
    assert [m["mountPath"] for m in container["volumeMounts"]][-2:] == ["/models", "/cache"]
    assert {"name": "LEVEL", "value": "all"} in _user_env(pod)
    assert pod["metadata"]["labels"]["team"] == "rl"
    # A role that sets nothing of its own gets the template alone.
    reward = pods["reward"]["spec"]
    assert reward["serviceAccountName"] == "trainer" and "affinity" not in reward
    assert [v["name"] for v in reward["volumes"]][-1] == "weights"


def test_a_job_without_pod_settings_renders_as_before() -> None:
    pod = _pods(_job())["policy"]
    for key in ("serviceAccountName", "priorityClassName", "imagePullSecrets", "affinity"):
        assert key not in pod["spec"]
    assert "envFrom" not in pod["spec"]["containers"][0]
    assert "terminationGracePeriodSeconds" not in pod["spec"]
    assert [v["name"] for v in pod["spec"]["volumes"]] == ["spec", "tmp", "shm", "checkpoint"]


def test_rlhfjobs_labels_and_env_win() -> None:
    # The spec refuses a user's rlhf.dev/* label or RLHFJOB_* env (test_pod_merge.py); one
    # that got past it (a PodSettings built without validation) still loses to rlhfjob's.
    job = _customised()
    plan = plan_job(job)
    worker = plan.workers[1]
    forged = worker.pod.model_copy(
        update={"labels": {"rlhf.dev/role": "x", "app.kubernetes.io/name": "y"}}
    )
    pod = build_pod(job, plan, dataclasses.replace(worker, pod=forged), generation=0)
    labels = pod["metadata"]["labels"]
    assert labels["rlhf.dev/role"] == "policy" and labels["app.kubernetes.io/name"] == "rlhfjob"
    names = [e["name"] for e in pod["spec"]["containers"][0]["env"]]
    assert names.index("RANK") < names.index("HF_TOKEN")  # the contract's first
    assert len(names) == len(set(names))


@pytest.mark.parametrize(("grace", "stop"), [(60, "55"), (6, "1"), (3, "1"), (1, "1")])
def test_termination_grace_reaches_every_pod_and_the_stop_timer(grace: int, stop: str) -> None:
    job = _job(runPolicy={"terminationGracePeriodSeconds": grace})
    for pod in _pods(job).values():
        assert pod["spec"]["terminationGracePeriodSeconds"] == grace
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        assert env["RLHFJOB_STOP_GRACE_S"] == stop


def test_without_a_grace_period_kubernetes_default_and_the_runtimes_stand() -> None:
    for pod in _pods(_job()).values():
        assert "terminationGracePeriodSeconds" not in pod["spec"]
        names = {e["name"] for e in pod["spec"]["containers"][0]["env"]}
        assert "RLHFJOB_STOP_GRACE_S" not in names


def test_termination_grace_is_at_least_one_second() -> None:
    with pytest.raises(ValueError, match="terminationGracePeriodSeconds"):
        _job(runPolicy={"terminationGracePeriodSeconds": 0})


@pytest.mark.parametrize(
    ("pod", "says"),
    [
        ({"volumeMounts": [{"name": "nowhere", "mountPath": "/x"}]}, "names volume 'nowhere'"),
        ({"volumeMounts": [{"name": "checkpoint", "mountPath": "/checkpoints"}]}, "checkpoint"),
    ],
)
def test_a_mount_the_api_server_would_refuse_is_refused_when_planned(
    pod: dict[str, Any], says: str
) -> None:
    with pytest.raises(ValueError, match=f"role 'policy'.*{says}"):
        plan_job(_job(policy_pod=pod))


def test_a_mount_may_name_a_template_volume_or_rlhfjobs_own() -> None:
    job = _job(
        podTemplate={"volumes": [_WEIGHTS]},
        policy_pod={
            "volumeMounts": [
                {"name": "weights", "mountPath": "/models"},
                {"name": "checkpoint", "mountPath": "/ckpt-again", "readOnly": True},
            ]
        },
    )
    mounts = _pods(job)["policy"]["spec"]["containers"][0]["volumeMounts"]
    assert [m["mountPath"] for m in mounts][-2:] == ["/models", "/ckpt-again"]


def test_colocated_models_must_agree_on_what_a_pod_has_one_of() -> None:
    m = copy.deepcopy(base_manifest("job"))
    m["spec"]["runtime"]["colocation"] = [["reference", "reward"]]
    m["spec"]["models"]["reference"]["pod"] = {"serviceAccountName": "a", "labels": {"x": "1"}}
    m["spec"]["models"]["reward"]["pod"] = {"labels": {"y": "2"}}
    (worker,) = [w for w in plan_job(load_job(m)).workers if w.role == "reference-reward"]
    assert worker.pod.service_account_name == "a"
    assert worker.pod.labels == {"x": "1", "y": "2"}  # maps merge
    m["spec"]["models"]["reward"]["pod"] = {"serviceAccountName": "b"}
    with pytest.raises(ValueError, match="'reference-reward'.*different serviceAccountNames"):
        plan_job(load_job(m))
