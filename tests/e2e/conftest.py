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
from collections.abc import Iterator

import pytest
from gangs import Checkpoints, checkpoint_claim, running_pods
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
