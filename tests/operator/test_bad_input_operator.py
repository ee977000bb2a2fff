"""Specs the API server accepts but that cannot run: the real operator marks each job
Failed with condition reason InvalidSpec and a Warning Event, both naming what to fix,
and creates nothing for it. (The pod-name clash of two models is in the lifecycle test.)"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from malformed import Manifest, base_manifest
from mutations import MUTATIONS
from operator_proc import apply, events, install_crd, job, pods, running_operator, wait_for

from cluster import Cluster


def _colocated(**pods_of: dict[str, Any]) -> Callable[[Manifest], None]:
    """reference and reward (one replica each) share a worker, with these pod settings."""

    def edit(m: Manifest) -> None:
        m["spec"]["runtime"]["colocation"] = [["reference", "reward"]]
        for model, pod in pods_of.items():
            m["spec"]["models"][model]["pod"] = pod

    return edit


def _role_clash(m: Manifest) -> None:
    m["spec"]["runtime"]["colocation"] = [["reference", "reward"]]
    m["spec"]["models"]["reference-reward"] = {}  # the colocated worker's role name


def _quantity(m: Manifest) -> None:
    mutation = next(x for x in MUTATIONS if x.where == "pydantic")
    bad = mutation.manifest()
    m["spec"] = bad["spec"]


# name -> (edit, what the message must name)
CASES: dict[str, tuple[Callable[[Manifest], None], str]] = {
    "images": (
        _colocated(reference={"image": "a:1"}, reward={"image": "b:1"}),
        "different images",
    ),
    "selectors": (
        _colocated(
            reference={"nodeSelector": {"pool": "a"}}, reward={"nodeSelector": {"pool": "b"}}
        ),
        "nodeSelector 'pool'",
    ),
    "resources": (
        _colocated(
            reference={"resources": {"requests": {"memory": "1Gi"}}},
            reward={"resources": {"requests": {"memory": "2Gi"}}},
        ),
        "resources.requests.memory",
    ),
    "role-clash": (_role_clash, "reference-reward"),
    "quantity": (_quantity, "is not a Kubernetes quantity"),
    "min-available": (
        lambda m: m["spec"].update(
            runPolicy={"schedulingPolicy": {"minAvailable": 7, "podGroup": {"kind": "volcano"}}}
        ),
        "minAvailable is 7 but the gang has 6 pods",
    ),
}


@pytest.fixture(scope="module")
def cluster(control_plane: Cluster) -> Cluster:
    install_crd(control_plane)
    return control_plane


def _manifest(name: str, edit: Callable[[Manifest], None]) -> Manifest:
    m = copy.deepcopy(base_manifest(name))
    edit(m)
    m["metadata"] = {"name": name}
    return m


def test_specs_only_the_operator_can_refuse_fail_with_a_condition_and_an_event(
    cluster: Cluster, namespace: str, bad_inputs: Any
) -> None:
    with running_operator(cluster, namespace):
        for name, (edit, _) in CASES.items():
            apply(cluster, namespace, _manifest(f"bad-{name}", edit))  # the API server takes it

        def failed(name: str) -> dict[str, Any] | None:
            status = job(cluster, namespace, name).get("status") or {}
            conds = [c for c in status.get("conditions", []) if c["type"] == "Failed"]
            return conds[0] if status.get("phase") == "Failed" and conds else None

        for name, (_, named) in CASES.items():
            cond = wait_for(lambda n=f"bad-{name}": failed(n), what=f"bad-{name} Failed")
            assert cond["reason"] == "InvalidSpec", cond
            assert named in cond["message"], cond["message"]
            warned = [
                e for e in events(cluster, namespace, f"bad-{name}") if e["reason"] == "InvalidSpec"
            ]
            assert warned and warned[0]["type"] == "Warning", warned
            assert named in warned[0]["message"], warned[0]["message"]
            assert not pods(cluster, namespace, f"bad-{name}")
            bad_inputs.refused("spec, operator")
