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
- `uninterrupted` (session): the final weights of the small job run undisturbed under
  `rlhfjob run` (no cluster needed), which the local kill and fuzz runs must end on.
- `checkpoints`: a PersistentVolumeClaim bound (by the real controller-manager)
  to a hostPath PersistentVolume on a temp dir: checkpoints that outlive pods.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from gangs import Checkpoints, checkpoint_claim, final_weights, local_manifest, running_pods
from operator_proc import install_crd
from podrunner import PodRunner

from cluster import Cluster, Missing, session_cluster


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
    with cluster.namespace("e2e-") as name:
        yield name


@pytest.fixture
def pods(cluster: Cluster) -> Iterator[PodRunner]:
    with running_pods(cluster) as runner:
        yield runner


@pytest.fixture
def checkpoints(cluster: Cluster, namespace: str) -> Iterator[Checkpoints]:
    with checkpoint_claim(cluster, namespace) as claim:
        yield claim


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    where = tmp_path_factory.mktemp("uninterrupted")
    path = local_manifest(where, "e2e-uninterrupted", where / "ckpt", [])
    proc = subprocess.run(
        [sys.executable, "-m", "rlhfjob_operator.cli", "run", str(path), "--backoff-base", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return final_weights(where / "ckpt")
