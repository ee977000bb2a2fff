"""Fixtures for the end-to-end tests: jobs applied with kubectl really train.

They need the test control plane of tests/operator (shared with it, one per
session: `cluster.session_cluster`) and its test kubelet, which runs the pods
the operator creates as local processes (`podrunner.PodRunner`). Against a
cluster named by KUBECONFIG there is no such kubelet: these tests skip, saying
so. Missing binaries fail the session under CI=true and skip it locally.

- `cluster` (session): the cluster, the CRD installed.
- `namespace`: a fresh namespace, deleted afterwards.
- `pods`: a PodRunner as the kubelet's handler for the test; afterwards no
  process of it is left and the kubelet reported no error.
- `checkpoints`: a PersistentVolumeClaim bound (by the real controller-manager)
  to a hostPath PersistentVolume on a temp dir: checkpoints that outlive pods.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))
from gangs import Checkpoints
from kubernetes import client as k8s
from operator_proc import install_crd
from podrunner import PodRunner

from cluster import Cluster, Missing, session_cluster, wait_until

REPO = Path(__file__).resolve().parents[2]
# Passed on to pod processes, so that the suite's leftover check sees them.
SESSION_MARKERS = ("RLHFJOB_TEST_SESSION",)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    try:
        with session_cluster() as found:
            if found.kubelet is None:
                pytest.skip(
                    "end-to-end tests need the test control plane's kubelet (no KUBECONFIG)"
                )
            install_crd(found)
            yield found
    except Missing as exc:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(str(exc), pytrace=False)
        pytest.skip(str(exc))


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    name = cluster.create_namespace("e2e-")
    try:
        yield name
    finally:
        cluster.delete_namespace(name)


@pytest.fixture
def pods(cluster: Cluster) -> Iterator[PodRunner]:
    kubelet = cluster.kubelet
    assert kubelet is not None
    errors = len(kubelet.errors)
    runner = PodRunner(REPO, inherit=SESSION_MARKERS)
    try:
        with kubelet.using(runner):
            yield runner
    finally:
        left = runner.running()
        runner.close()
    assert not left, f"pods still running after the test: {left}"
    assert kubelet.errors[errors:] == []


@pytest.fixture
def checkpoints(cluster: Cluster, namespace: str) -> Iterator[Checkpoints]:
    core = k8s.CoreV1Api(cluster.api_client)
    path = Path(tempfile.mkdtemp(prefix="rlhfjob-pv-"))
    pv = f"e2e-{uuid.uuid4().hex[:10]}"
    core.create_persistent_volume(
        {
            "metadata": {"name": pv},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteMany"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "",
                "hostPath": {"path": str(path), "type": "Directory"},
                # Only this test's claim may take it.
                "claimRef": {"namespace": namespace, "name": "checkpoints"},
            },
        }
    )
    try:
        core.create_namespaced_persistent_volume_claim(
            namespace,
            {
                "metadata": {"name": "checkpoints"},
                "spec": {
                    "accessModes": ["ReadWriteMany"],
                    "storageClassName": "",
                    "volumeName": pv,
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            },
        )
        wait_until(
            lambda: (
                core.read_namespaced_persistent_volume_claim("checkpoints", namespace).status.phase
                == "Bound"
            ),
            timeout=60,
            what="the checkpoint claim Bound (controller-manager's PV controller)",
        )
        yield Checkpoints("checkpoints", path)
    finally:
        core.delete_persistent_volume(pv)
        shutil.rmtree(path, ignore_errors=True)
