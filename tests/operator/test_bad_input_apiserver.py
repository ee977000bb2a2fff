"""Every generated bad manifest (tests/support/mutations.py) that the CRD can catch is
refused by the real API server, naming the field; the ones only pydantic catches (the
form of a Kubernetes quantity) are let through, for the operator to refuse."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException
from mutations import MUTATIONS, full_manifest
from operator_proc import GROUP, PLURAL, VERSION, install_crd

from cluster import Cluster


@pytest.fixture(scope="module")
def api(control_plane: Cluster) -> Iterator[tuple[k8s.CustomObjectsApi, str]]:
    install_crd(control_plane)
    with control_plane.namespace("gen-") as name:
        yield k8s.CustomObjectsApi(control_plane.api_client), name


def _create(api: k8s.CustomObjectsApi, namespace: str, body: dict[str, Any]) -> None:
    """A dry-run create with strict field validation (what kubectl apply does by default)."""
    api.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, body, dry_run="All", field_validation="Strict"
    )


def test_api_server_refuses_every_generated_mutation_naming_the_field(
    api: tuple[k8s.CustomObjectsApi, str], bad_inputs: Any
) -> None:
    client, namespace = api
    _create(client, namespace, full_manifest("full"))  # the base itself is fine
    cases = [m for m in MUTATIONS if m.where == "both"]
    wrong = []
    for index, mutation in enumerate(cases):
        try:
            _create(client, namespace, mutation.manifest(f"gen-{index}"))
        except ApiException as exc:
            message = json.loads(exc.body).get("message", "") if exc.body else ""
            if exc.status not in (400, 422) or mutation.field not in message:
                wrong.append(f"{mutation.id}: {exc.status} {message[:300]}")
            continue
        wrong.append(f"{mutation.id}: accepted")
    assert not wrong, "\n".join(wrong)
    assert len(cases) >= 100
    bad_inputs.refused("manifest, API server", len(cases))


def test_quantities_are_left_to_the_operator(api: tuple[k8s.CustomObjectsApi, str]) -> None:
    client, namespace = api
    cases = [m for m in MUTATIONS if m.where == "pydantic"]
    assert cases
    for index, mutation in enumerate(cases):
        _create(client, namespace, mutation.manifest(f"qty-{index}"))
