"""Fixtures for tests that talk to a Kubernetes API server.

`control_plane` (session): a `cluster.Cluster` (`cluster.session_cluster`, one
for the session, shared with tests/e2e). With KUBECONFIG set it wraps that
cluster (no test kubelet: `kubelet` is None); otherwise it starts the real
control plane built by `make cluster-bin` on loopback, with four fake
nodes (cpu-0, cpu-1, gpu-0, gpu-1; the GPU ones with 8 `nvidia.com/gpu` each)
and the test kubelet. Missing binaries fail the session under CI=true and
skip it locally, both saying "run make cluster-bin".

`namespace` (function): a fresh namespace in it, deleted afterwards.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from cluster import Cluster, Missing, session_cluster


@pytest.fixture(scope="session")
def control_plane() -> Iterator[Cluster]:
    try:
        with session_cluster() as cluster:
            yield cluster
    except Missing as exc:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(str(exc), pytrace=False)
        pytest.skip(str(exc))


@pytest.fixture
def namespace(control_plane: Cluster) -> Iterator[str]:
    with control_plane.namespace("t-") as name:
        yield name
