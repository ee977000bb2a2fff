"""A real Kubernetes control plane on loopback for the operator tests.

`ControlPlane` starts etcd, kube-apiserver (client certificates, RBAC on),
kube-controller-manager and kube-scheduler, built by `make cluster-bin` into a
cache outside the repo (tests/cluster/build.sh), on 127.0.0.1 with free ports
and a temporary directory. `TestKubelet` plays the kubelet of a few fake nodes
(CPU and GPU, `nvidia.com/gpu` capacity): it keeps their heartbeats fresh and
moves the pods the real scheduler binds to them through their phases.

    with ControlPlane() as cluster:        # a Cluster
        cluster.kubectl_run("get", "nodes")
        cluster.kubelet.finish_pod("ns", "pod", exit_code=1)

`Kueue` runs the real Kueue controller manager (also built by `make cluster-bin`)
against that control plane, for the tests of Kueue admission and preemption.
`Prometheus` runs the real Prometheus (also built by `make cluster-bin`) with the
chart's PodMonitor and ServiceMonitor as scrape configs, and `promtool` the real
promtool, for the dashboard and alert tests.

`Cluster` is what tests see; `Cluster.from_kubeconfig` wraps any cluster named
by KUBECONFIG the same way (no control plane, no test kubelet).

This package is the facade: tests import from `cluster` only. Inside, paths.py
(where the binaries are), pki.py (the certificate authority, kubeconfigs),
processes.py (components, ports, bounded waits), nodes.py and kubelet.py (the
fake nodes, the test kubelet), handle.py (`Cluster`), control_plane.py and
session.py (the one cluster of a test session), kueue.py (`Kueue`), prometheus.py
(`Prometheus`, `Target`, `scrape_job`, `rule_groups`, `promtool`).
"""

from .control_plane import ControlPlane, ControlPlaneError
from .handle import Cluster
from .kubelet import TestKubelet
from .kueue import Kueue, KueueError
from .nodes import NodeSpec, PodHandler
from .paths import GPU
from .processes import wait_until
from .prometheus import Prometheus, PrometheusError, Target, promtool, rule_groups, scrape_job
from .session import Missing, session_cluster

__all__ = [
    "GPU",
    "Cluster",
    "ControlPlane",
    "ControlPlaneError",
    "Kueue",
    "KueueError",
    "Missing",
    "NodeSpec",
    "PodHandler",
    "Prometheus",
    "PrometheusError",
    "Target",
    "TestKubelet",
    "promtool",
    "rule_groups",
    "scrape_job",
    "session_cluster",
    "wait_until",
]
