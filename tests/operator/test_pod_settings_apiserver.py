"""The real API server on pod settings: nodeSelector and tolerations change only while a
job is suspended (so Kueue can inject and restore a flavour's placement), and every
manifest in examples/k8s (and the YAML-only examples/*_engine.yaml) is accepted
as it ships, it and the pods the operator renders from it (server-side dry runs, strict
field validation)."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException
from malformed import base_manifest
from operator_proc import GROUP, PLURAL, VERSION, install_crd

from cluster import Cluster
from rlhfjob_operator.kube.manifests import build_gang
from rlhfjob_operator.plan import plan_job
from rlhfjob_operator.spec import load_job

_EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EXAMPLES = [*sorted((_EXAMPLES / "k8s").glob("*.yaml")), *sorted(_EXAMPLES.glob("*_engine.yaml"))]
_ZONE = {"zone": "a"}
_TAINT = [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]
_MOVED = "may change only while spec.runPolicy.suspend is true"


@pytest.fixture(scope="module")
def api(control_plane: Cluster) -> Iterator[tuple[Cluster, str]]:
    install_crd(control_plane)
    with control_plane.namespace("pods-") as name:
        yield control_plane, name


def _objects(cluster: Cluster) -> k8s.CustomObjectsApi:
    return k8s.CustomObjectsApi(cluster.api_client)


def _message(exc: ApiException) -> str:
    return str(json.loads(exc.body).get("message", "")) if exc.body else str(exc)


def _replace(cluster: Cluster, namespace: str, name: str, edit: Any) -> str | None:
    """Apply ``edit`` to the stored job in a dry-run update: None when the server takes it,
    else its message."""
    objects = _objects(cluster)
    body = objects.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    edit(body["spec"])
    try:
        objects.replace_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, body, dry_run="All", field_validation="Strict"
        )
    except ApiException as exc:
        assert exc.status == 422, _message(exc)
        return _message(exc)
    return None


def _stored(cluster: Cluster, namespace: str, name: str, *, suspend: bool) -> str:
    m = copy.deepcopy(base_manifest(name))
    m["spec"].update(nodeSelector={"pool": "gpu"}, runPolicy={"suspend": suspend})
    _objects(cluster).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, m)
    return name


def _set(**fields: Any) -> Any:
    def edit(spec: dict[str, Any]) -> None:
        for key, value in fields.items():
            if key == "suspend":
                spec.setdefault("runPolicy", {})["suspend"] = value
            else:
                spec[key] = value

    return edit


def test_placement_is_refused_while_the_job_runs(api: tuple[Cluster, str]) -> None:
    cluster, namespace = api
    name = _stored(cluster, namespace, "running", suspend=False)
    moved = _replace(cluster, namespace, name, _set(nodeSelector=_ZONE))
    assert moved is not None and f"spec.nodeSelector {_MOVED}" in moved
    tolerated = _replace(cluster, namespace, name, _set(tolerations=_TAINT))
    assert tolerated is not None and f"spec.tolerations {_MOVED}" in tolerated
    # Kueue's eviction: suspend and restore the original placement in one update.
    assert _replace(cluster, namespace, name, _set(suspend=True, nodeSelector={})) is None
    # The rest of the spec stays immutable, suspended or not.
    template = _replace(cluster, namespace, name, _set(podTemplate={"labels": {"a": "b"}}))
    assert template is not None and "spec.podTemplate is immutable" in template
    # runPolicy is mutable: a new grace period reaches the next generation's pods.
    grace = _set(runPolicy={"terminationGracePeriodSeconds": 90})
    assert _replace(cluster, namespace, name, grace) is None


def test_placement_may_change_while_the_job_is_suspended(api: tuple[Cluster, str]) -> None:
    cluster, namespace = api
    name = _stored(cluster, namespace, "suspended", suspend=True)
    assert _replace(cluster, namespace, name, _set(nodeSelector=_ZONE, tolerations=_TAINT)) is None
    # Kueue's admission: inject the flavour's placement and unsuspend in one update.
    admit = _set(nodeSelector=_ZONE, tolerations=_TAINT, suspend=False)
    assert _replace(cluster, namespace, name, admit) is None
    still = _replace(cluster, namespace, name, _set(image="other:2", suspend=True))
    assert still is not None and "spec.image is immutable" in still


def test_the_grace_period_is_at_least_one_second(api: tuple[Cluster, str]) -> None:
    cluster, namespace = api
    m = copy.deepcopy(base_manifest("no-grace"))
    m["spec"]["runPolicy"] = {"terminationGracePeriodSeconds": 0}
    with pytest.raises(ApiException) as info:
        _objects(cluster).create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, m, dry_run="All"
        )
    assert "terminationGracePeriodSeconds" in _message(info.value)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_k8s_example_and_its_pods_are_accepted(api: tuple[Cluster, str], path: Path) -> None:
    cluster, namespace = api
    manifest = yaml.safe_load(path.read_text())
    load_job(manifest)  # the pydantic schema: what `rlhfjob validate` and the operator check
    created = _objects(cluster).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, manifest, dry_run="All", field_validation="Strict"
    )
    job = load_job(created)  # with the uid the dry run gave it, for the ownerReferences
    core = k8s.CoreV1Api(cluster.api_client)
    for pod in build_gang(job, plan_job(job), generation=0):
        core.create_namespaced_pod(namespace, pod, dry_run="All", field_validation="Strict")


@pytest.mark.parametrize(
    ("edit", "where"),
    [
        (lambda s: s.update(env=[{"name": "RANK", "value": "1"}]), "spec.env"),
        (lambda s: s.update(podTemplate={"env": [{"name": "RLHFJOB_X"}]}), "spec.podTemplate.env"),
        (lambda s: s.update(driver={"env": [{"name": "LOCAL_RANK"}]}), "spec.driver.env"),
        (
            lambda s: s["models"]["policy"].update(pod={"env": [{"name": "MASTER_PORT"}]}),
            "spec.models[policy].pod.env",
        ),
    ],
    ids=["spec", "podTemplate", "driver", "model"],
)
def test_reserved_env_is_refused_in_every_layer_naming_it(
    api: tuple[Cluster, str], edit: Any, where: str
) -> None:
    cluster, namespace = api
    m = copy.deepcopy(base_manifest("reserved"))
    edit(m["spec"])
    with pytest.raises(ApiException) as info:
        _objects(cluster).create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, m, dry_run="All"
        )
    message = _message(info.value)
    assert f"{where}: Invalid value" in message and "are set by rlhfjob" in message, message
