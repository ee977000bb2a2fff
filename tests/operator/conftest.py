"""Fixtures for tests that talk to a Kubernetes API server.

`control_plane` (session): a `cluster.Cluster`. With KUBECONFIG set it wraps
that cluster (no test kubelet: `kubelet` is None); otherwise it starts the
real control plane built by `make cluster-bin` on loopback, with four fake
nodes (cpu-0, cpu-1, gpu-0, gpu-1; the GPU ones with 8 `nvidia.com/gpu` each)
and the test kubelet. Missing binaries fail the session under CI=true and
skip it locally, both saying "run make cluster-bin".

`namespace` (function): a fresh namespace in it, deleted afterwards.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster import Cluster, ControlPlane, missing_binaries, tools_bin_dir


def _missing(what: str) -> None:
    msg = f"{what}: run make cluster-bin"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def control_plane() -> Iterator[Cluster]:
    external = os.environ.get("KUBECONFIG")
    if external:
        tools = [p for p in missing_binaries() if p.parent == tools_bin_dir()]
        if tools and not all(shutil.which(p.name) for p in tools):
            _missing(f"missing {', '.join(map(str, tools))}")
        home = Path(tempfile.mkdtemp(prefix="rlhfjob-tools-"))
        try:
            cluster = Cluster.from_kubeconfig(Path(external), home)
            yield cluster
            cluster.api_client.close()
        finally:
            shutil.rmtree(home, ignore_errors=True)
        return
    missing = missing_binaries()
    if missing:
        _missing(f"missing {', '.join(map(str, missing))}")
    logs = os.environ.get("RLHFJOB_CLUSTER_LOGS")  # keep component logs for debugging
    cp = ControlPlane(keep_logs_in=Path(logs) if logs else None)
    try:
        yield cp.start()
    finally:
        cp.stop()


@pytest.fixture
def namespace(control_plane: Cluster) -> Iterator[str]:
    name = control_plane.create_namespace("t-")
    try:
        yield name
    finally:
        control_plane.delete_namespace(name)
