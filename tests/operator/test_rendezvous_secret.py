"""The job's rendezvous Secret with the real operator: created once, before the pods that
read it by reference (pods that run non-root on a read-only root filesystem), kept across
a gang restart (create-if-absent), and collected with the job."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from kubernetes import client as k8s
from malformed import base_manifest
from operator_proc import apply, install_crd, job, pods, running_operator, wait_for, wait_phase

from cluster import Cluster


def _secret(cluster: Cluster, namespace: str, name: str) -> Any:
    core = k8s.CoreV1Api(cluster.api_client)
    found = core.list_namespaced_secret(namespace, field_selector=f"metadata.name={name}").items
    return found[0] if found else None


def test_the_secret_is_made_once_read_by_reference_and_collected_with_the_job(
    control_plane: Cluster, namespace: str
) -> None:
    kubelet = control_plane.kubelet
    if kubelet is None:
        pytest.skip("needs the test kubelet to move pods through their phases")
    install_crd(control_plane)
    m = base_manifest("sealed")
    m["spec"]["runPolicy"] = {"backoffLimit": 2}
    with running_operator(control_plane, namespace, backoff=0.5):
        apply(control_plane, namespace, m)
        obj = wait_phase(control_plane, namespace, "sealed", "Running", timeout=90)
        secret = _secret(control_plane, namespace, "sealed-rendezvous")
        assert secret is not None
        (owner,) = secret.metadata.owner_references
        assert (owner.kind, owner.uid, owner.controller) == (
            "RLHFJob",
            obj["metadata"]["uid"],
            True,
        )
        assert secret.immutable is True
        token = base64.b64decode(secret.data["token"]).decode()
        assert len(token) >= 32
        for pod in pods(control_plane, namespace, "sealed"):
            env = pod["spec"]["containers"][0]["env"]
            (entry,) = [e for e in env if e["name"] == "RLHFJOB_JOB_SECRET"]
            assert entry == {
                "name": "RLHFJOB_JOB_SECRET",
                "valueFrom": {"secretKeyRef": {"name": "sealed-rendezvous", "key": "token"}},
            }
            assert token not in str(pod), "the token is in a pod spec"
            # As the API server keeps them: non-root, read-only root filesystem.
            assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
            context = pod["spec"]["containers"][0]["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False

        # A gang restart re-creates the pods, not the Secret: same object, same token.
        kubelet.finish_pod(namespace, "sealed-reward-0-g0", 1)
        wait_for(
            lambda: job(control_plane, namespace, "sealed")["status"].get("restartGeneration") == 1,
            what="the gang restarted",
        )
        wait_phase(control_plane, namespace, "sealed", "Running", timeout=90)
        again = _secret(control_plane, namespace, "sealed-rendezvous")
        assert again.metadata.uid == secret.metadata.uid
        assert again.data["token"] == secret.data["token"]

        control_plane.kubectl_run("delete", "rlhfjob", "sealed", "-n", namespace, "--wait=true")
        wait_for(
            lambda: _secret(control_plane, namespace, "sealed-rendezvous") is None,
            what="the Secret collected with its job",
            timeout=60,
        )
