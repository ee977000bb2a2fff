"""The operator at scale: N jobs of 16 model replicas (17 pods each) applied at once to
the test control plane (a real etcd, kube-apiserver, scheduler and controller-manager on
127.0.0.1; the test kubelet marks pods Running), beside one such job alone.

    python bench/operator_scale.py              # 1 job, then 100 jobs (1,700 pods)
    python bench/operator_scale.py --jobs 20

Per row: seconds from ``kubectl apply`` until every pod exists and until every job is
Running, the operator's own API requests per pod (``rlhfjob_operator_api_requests_total``:
pods, status, Events, gates; kopf's watches and annotation patches are not counted), the
client-side throttling it waited, and the operator's peak memory (VmHWM). The operator
runs with its defaults (``--kube-api-qps 100 --kube-api-burst 200``). Asserts nothing;
needs ``make cluster-bin``. The nodes are big enough for every pod (4 nodes of 500
pods); the pods ask for no GPU, since the test nodes' 16 GPUs would hold one job only.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "support"))

from malformed import wide_manifest  # noqa: E402
from operator_proc import Operator, install_crd  # noqa: E402

from cluster import ControlPlane, NodeSpec, wait_until  # noqa: E402
from common import load_average, machine  # noqa: E402

REPLICAS = 16
NODES = tuple(NodeSpec(f"big-{i}", cpu="1000", memory="4000Gi", pods=500) for i in range(4))


def _sample(op: Operator) -> dict[str, float]:
    """The operator's request count and throttled seconds, and its peak RSS (MiB)."""
    out = {"requests": 0.0, "throttled": 0.0}
    for line in op.metrics().splitlines():
        if line.startswith("rlhfjob_operator_api_requests_total{"):
            out["requests"] += float(line.rsplit(" ", 1)[1])
        elif line.startswith("rlhfjob_operator_client_throttled_seconds_total "):
            out["throttled"] = float(line.rsplit(" ", 1)[1])
    assert op.proc is not None
    status = Path(f"/proc/{op.proc.pid}/status").read_text()
    (hwm,) = [ln for ln in status.splitlines() if ln.startswith("VmHWM:")]
    out["peak_mib"] = int(hwm.split()[1]) / 1024
    return out


def measure(cluster: Any, jobs: int, *, timeout: float) -> dict[str, float]:
    """Apply ``jobs`` jobs at once in a fresh namespace with a fresh operator."""
    with cluster.namespace("scale-") as ns:
        op = Operator(cluster, ns).start()
        try:
            wait_until(lambda: "rlhfjob_operator_jobs" in op.metrics(), timeout=60, what="metrics")
            time.sleep(1.0)  # the figure is the reconcile, not kopf's start
            before = _sample(op)
            with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
                yaml.safe_dump_all(
                    [wide_manifest(f"j{i}", REPLICAS, num_gpu=0) for i in range(jobs)], f
                )
                f.flush()
                t0 = time.perf_counter()
                cluster.kubectl_run("apply", "-n", ns, "-f", f.name, timeout=300)
            want = jobs * (REPLICAS + 1)
            core = k8s.CoreV1Api(cluster.api_client)
            custom = k8s.CustomObjectsApi(cluster.api_client)

            def pods_exist() -> bool:
                items = core.list_namespaced_pod(ns, label_selector="rlhf.dev/job").items
                return len(items) >= want

            wait_until(pods_exist, timeout=timeout, what=f"{want} pods", interval=0.5)
            t_pods = time.perf_counter() - t0

            def all_running() -> bool:
                listed = custom.list_namespaced_custom_object(
                    "rlhf.dev", "v1alpha1", ns, "rlhfjobs"
                )["items"]
                return (
                    sum((j.get("status") or {}).get("phase") == "Running" for j in listed) == jobs
                )

            wait_until(all_running, timeout=timeout, what=f"{jobs} jobs Running", interval=1.0)
            t_running = time.perf_counter() - t0
            after = _sample(op)
        finally:
            op.cleanup()
    return {
        "jobs": jobs,
        "pods": want,
        "t_pods": t_pods,
        "t_running": t_running,
        "requests_per_pod": (after["requests"] - before["requests"]) / want,
        "throttled": after["throttled"] - before["throttled"],
        "peak_mib": after["peak_mib"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=100)
    p.add_argument("--timeout", type=float, default=900.0)
    args = p.parse_args()
    load_before = load_average()
    with ControlPlane(nodes=NODES) as cluster:
        install_crd(cluster)
        rows = [measure(cluster, 1, timeout=args.timeout)]
        rows.append(measure(cluster, args.jobs, timeout=args.timeout))
    print(f"\n{machine()}; {datetime.date.today()}; load {load_before} -> {load_average()}")
    print(
        f"\n| jobs × {REPLICAS} replicas | pods | all pods exist | all jobs Running |"
        " operator requests / pod | throttled | operator peak RSS |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['jobs']:g} | {r['pods']:g} | {r['t_pods']:.1f} s | {r['t_running']:.1f} s |"
            f" {r['requests_per_pod']:.2f} | {r['throttled']:.1f} s | {r['peak_mib']:.0f} MiB |"
        )
    base, big = rows
    print(
        f"\n{big['jobs']:g} jobs: {big['t_running'] / base['t_running']:.1f}x the time of one "
        f"for {big['jobs']:g}x the pods ({big['pods'] / big['t_pods']:.0f} pods/s created)"
    )


if __name__ == "__main__":
    main()
