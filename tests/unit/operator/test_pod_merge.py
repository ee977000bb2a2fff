"""spec/merge.py: spec.podTemplate under a role's own pod settings, and what every layer refuses."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from malformed import base_manifest
from pydantic import ValidationError

from rlhfjob_operator.spec import PodSettings, format_validation_error, load_job, merge_pod_settings
from rlhfjob_operator.spec.base import SpecError


def _pod(**fields: Any) -> PodSettings:
    return PodSettings.model_validate(fields)


def _mount(name: str, path: str, **rest: Any) -> dict[str, Any]:
    return {"name": name, "mountPath": path, **rest}


def test_no_layers_give_the_empty_settings() -> None:
    assert merge_pod_settings() == _pod()
    assert merge_pod_settings(None, None) == _pod()


def test_a_role_env_var_overrides_the_templates_by_name_in_place() -> None:
    template = _pod(env=[{"name": "HF_HOME", "value": "/hf"}, {"name": "A", "value": "1"}])
    role = _pod(
        env=[
            {"name": "HF_HOME", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
            {"name": "B", "value": "2"},
        ]
    )
    env = merge_pod_settings(template, role).env
    assert [e.name for e in env] == ["HF_HOME", "A", "B"]  # the template's order, then new ones
    assert env[0].value == "" and env[0].value_from == {"secretKeyRef": {"name": "s", "key": "k"}}


def test_volume_mounts_are_keyed_by_mount_path() -> None:
    # One volume may be mounted twice (two subPaths); the same path mounted twice is one mount.
    template = _pod(
        volumeMounts=[
            _mount("weights", "/models/a", subPath="a"),
            _mount("weights", "/models/b", subPath="b"),
        ]
    )
    role = _pod(volumeMounts=[_mount("other", "/models/b", readOnly=True)])
    mounts = merge_pod_settings(template, role).volume_mounts
    assert [(m.name, m.mount_path, m.sub_path) for m in mounts] == [
        ("weights", "/models/a", "a"),
        ("other", "/models/b", None),
    ]


def test_volumes_and_pull_secrets_are_keyed_by_name() -> None:
    template = _pod(
        volumes=[{"name": "weights", "persistentVolumeClaim": {"claimName": "w1"}}],
        imagePullSecrets=[{"name": "registry"}],
    )
    role = _pod(
        volumes=[{"name": "weights", "persistentVolumeClaim": {"claimName": "w2"}}],
        imagePullSecrets=[{"name": "registry"}, {"name": "mirror"}],
    )
    merged = merge_pod_settings(template, role)
    assert [v.model_dump(mode="json") for v in merged.volumes] == [
        {"name": "weights", "persistentVolumeClaim": {"claimName": "w2"}}
    ]
    assert [s.name for s in merged.image_pull_secrets] == ["registry", "mirror"]


def test_tolerations_and_env_from_are_a_union_without_duplicates() -> None:
    gpu = {"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}
    spot = {"key": "spot", "operator": "Exists"}
    template = _pod(tolerations=[gpu], envFrom=[{"secretRef": {"name": "hub"}}])
    role = _pod(
        tolerations=[spot, gpu],
        envFrom=[{"secretRef": {"name": "hub"}}, {"configMapRef": {"name": "cfg"}}],
    )
    merged = merge_pod_settings(template, role)
    assert [t.key for t in merged.tolerations] == ["gpu", "spot"]
    assert [e.model_dump(mode="json", exclude_none=True) for e in merged.env_from] == [
        {"secretRef": {"name": "hub"}},
        {"configMapRef": {"name": "cfg"}},
    ]


def test_maps_merge_key_wise_and_scalars_override() -> None:
    template = _pod(
        image="base:1",
        serviceAccountName="trainer",
        nodeSelector={"pool": "a", "zone": "x"},
        labels={"team": "rl", "tier": "batch"},
        annotations={"note": "t"},
        resources={"requests": {"memory": "1Gi", "cpu": 2}, "limits": {"memory": "2Gi"}},
        affinity={"nodeAffinity": {"a": 1}, "podAffinity": {}},
    )
    role = _pod(
        priorityClassName="high",
        nodeSelector={"zone": "y"},
        labels={"tier": "gpu"},
        resources={"requests": {"memory": "8Gi"}},
        affinity={"podAntiAffinity": {}},
    )
    merged = merge_pod_settings(template, role)
    assert (merged.image, merged.service_account_name, merged.priority_class_name) == (
        "base:1",
        "trainer",
        "high",
    )
    assert merged.node_selector == {"pool": "a", "zone": "y"}
    assert merged.labels == {"team": "rl", "tier": "gpu"}
    assert merged.annotations == {"note": "t"}
    assert merged.resources is not None
    assert merged.resources.requests == {"memory": "8Gi", "cpu": 2}
    assert merged.resources.limits == {"memory": "2Gi"}
    assert merged.affinity == {"podAntiAffinity": {}}  # taken whole, never merged


def _refusal(edit: Any) -> str:
    m = copy.deepcopy(base_manifest("job"))
    edit(m["spec"])
    with pytest.raises((ValidationError, SpecError)) as info:
        load_job(m)
    exc = info.value
    return format_validation_error(exc) if isinstance(exc, ValidationError) else str(exc)


# Where each layer's env is, and the path pydantic's message starts with.
_LAYERS = {
    "spec: env: ": lambda spec, item: spec.update(env=[item]),
    "spec.podTemplate: env: ": lambda spec, item: spec.update(podTemplate={"env": [item]}),
    "spec.driver: env: ": lambda spec, item: spec.update(driver={"env": [item]}),
    "spec.models.policy.pod: env: ": lambda spec, item: spec["models"]["policy"].update(
        pod={"env": [item]}
    ),
}


@pytest.mark.parametrize("where", sorted(_LAYERS))
@pytest.mark.parametrize("name", ["RLHFJOB_STOP_GRACE_S", "MASTER_ADDR", "LOCAL_RANK"])
def test_reserved_env_names_are_refused_in_every_layer_naming_the_field(
    where: str, name: str
) -> None:
    message = _refusal(lambda spec: _LAYERS[where](spec, {"name": name, "value": "1"}))
    assert f"\n{where}{name} is set by rlhfjob; remove it" in message, message


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({"volumes": [{"name": "checkpoint", "emptyDir": {}}]}, "volumes: spec, tmp"),
        ({"volumeMounts": [_mount("w", "/dev/shm")]}, "volumeMounts: rlhfjob mounts"),
        ({"labels": {"rlhf.dev/role": "x"}}, "labels: rlhf.dev/*"),
        ({"labels": {"app.kubernetes.io/name": "x"}}, "labels: rlhf.dev/*"),
        ({"annotations": {"rlhf.dev/models": "x"}}, "annotations: rlhf.dev/*"),
        ({"envFrom": [{"prefix": "RLHFJOB_", "secretRef": {"name": "s"}}]}, "envFrom.prefix"),
        ({"env": [{"name": "A", "value": "1", "valueFrom": {}}]}, "value or valueFrom"),
    ],
)
def test_what_rlhfjob_sets_on_a_pod_is_refused_not_overridden(
    settings: dict[str, Any], says: str
) -> None:
    message = _refusal(lambda spec: spec.update(podTemplate=settings))
    assert "podTemplate" in message and says in message, message
