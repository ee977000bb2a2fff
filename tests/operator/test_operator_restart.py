"""A killed operator resumes without duplicating anything, and how fast a 16-replica job
gets its pods (printed, never asserted)."""

from __future__ import annotations

import copy
import random
import time
from typing import Any

import pytest
from malformed import base_manifest
from operator_proc import (
    Operator,
    apply,
    install_crd,
    job,
    pods,
    running_operator,
    wait_for,
    wait_phase,
)

from cluster import Cluster


@pytest.fixture(scope="module")
def cluster(control_plane: Cluster) -> Cluster:
    install_crd(control_plane)
    return control_plane


def _wide(name: str, replicas: int = 16, **run_policy: Any) -> dict[str, Any]:
    m = copy.deepcopy(base_manifest(name))
    m["spec"]["runtime"] = {
        "num_episode": 2,
        "sample_per_episode": 64,
        "generation_batch_size": 4,
        "train_micro_batch_size": 4,
    }
    m["spec"]["models"] = {"policy": {"num_gpu": 1, "num_replica": replicas}}
    if run_policy:
        m["spec"]["runPolicy"] = run_policy
    return m


def _pod_names(cluster: Cluster, namespace: str, name: str) -> list[str]:
    return sorted(p["metadata"]["name"] for p in pods(cluster, namespace, name))


def test_operator_killed_mid_creation_creates_no_duplicates(
    cluster: Cluster, namespace: str
) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    print(f"seed {seed}")
    op = Operator(cluster, namespace).start()
    try:
        for attempt in range(4):
            name = f"wide-{attempt}"
            apply(cluster, namespace, _wide(name))
            # Kill at a random point of the reconciliation (often mid-creation).
            time.sleep(rng.uniform(0.0, 1.5))
            seen = len(_pod_names(cluster, namespace, name))
            op.kill()
            print(f"attempt {attempt}: killed with {seen}/17 pods created")
            op.start()
            obj = wait_phase(cluster, namespace, name, "Running", timeout=90)
            names = _pod_names(cluster, namespace, name)
            assert len(names) == 17, names
            assert all(n.endswith("-g0") for n in names)
            assert obj["status"]["restarts"] == 0 and obj["status"]["restartGeneration"] == 0
            cluster.kubectl_run("delete", "rlhfjob", name, "-n", namespace, "--wait=true")
        assert op.stop() == 0
    except BaseException:
        print(op.log()[-8000:])
        raise
    finally:
        op.cleanup()


def test_operator_stopped_at_any_moment_of_its_start_exits_cleanly(
    cluster: Cluster, namespace: str
) -> None:
    """SIGTERM while it imports, while kopf starts or while it reconciles: exit 0 every time.
    (A restarted operator stopped during its imports used to die of SIGTERM's default
    action, exit -15: the killed-mid-creation test hit it when the killed operator had
    already set Running, so nothing between restart and stop waited for the new one.)"""
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    delays = [0.0, *sorted(rng.uniform(0.0, 3.0) for _ in range(5))]
    print(f"seed {seed}: SIGTERM {', '.join(f'{d:.2f}' for d in delays)} s after start")
    apply(cluster, namespace, _wide("stopped", replicas=2))  # something to reconcile
    for delay in delays:
        op = Operator(cluster, namespace).start()
        try:
            time.sleep(delay)
            code = op.stop()
            assert code == 0, f"SIGTERM {delay:.2f}s after start: exit {code}\n{op.log()[-4000:]}"
        finally:
            op.cleanup()


def test_operator_killed_mid_restart_restarts_the_gang_once(
    cluster: Cluster, namespace: str
) -> None:
    kubelet = cluster.kubelet
    if kubelet is None:
        pytest.skip("needs the test kubelet")
    op = Operator(cluster, namespace, backoff=2.0).start()
    try:
        apply(cluster, namespace, _wide("twice", replicas=4, backoffLimit=5))
        wait_phase(cluster, namespace, "twice", "Running")
        kubelet.finish_pod(namespace, "twice-policy-2-g0", 1)
        wait_for(
            lambda: job(cluster, namespace, "twice")["status"].get("restarts") == 1,
            what="restart recorded",
        )
        op.kill()  # after the status patch, during the gang's deletion or backoff
        op.start()
        obj = wait_phase(cluster, namespace, "twice", "Running", timeout=90)
        assert obj["status"]["restarts"] == 1 and obj["status"]["restartGeneration"] == 1
        live = [
            p["metadata"]["name"]
            for p in pods(cluster, namespace, "twice")
            if p["status"].get("phase") == "Running"
        ]
        assert sorted(live) == sorted(
            [f"twice-policy-{i}-g1" for i in range(4)] + ["twice-driver-g1"]
        )
        assert op.stop() == 0
    except BaseException:
        print(op.log()[-8000:])
        raise
    finally:
        op.cleanup()


def test_sixteen_replicas_apply_to_pods_created(
    cluster: Cluster, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with running_operator(cluster, namespace) as op:
        # Let the operator finish starting, so the figure is the reconcile, not the boot.
        wait_for(lambda: "rlhfjob_operator_jobs" in op.metrics(), what="operator metrics")
        time.sleep(1.0)
        t0 = time.perf_counter()
        apply(cluster, namespace, _wide("sixteen"))
        t_applied = time.perf_counter() - t0
        wait_for(
            lambda: len(_pod_names(cluster, namespace, "sixteen")) == 17,
            what="17 pods",
            timeout=60,
        )
        t_created = time.perf_counter() - t0
        wait_phase(cluster, namespace, "sixteen", "Running", timeout=120)
        t_running = time.perf_counter() - t0
        nodes = {p["spec"].get("nodeName") for p in pods(cluster, namespace, "sixteen")}
    with capsys.disabled():
        print(
            "\n16 model replicas (+ driver, 1 GPU each), real control plane on loopback:\n"
            f"  kubectl apply returned   {t_applied:6.2f} s\n"
            f"  all 17 pods created      {t_created:6.2f} s after apply started\n"
            f"  job Running (scheduled)  {t_running:6.2f} s"
            f"   nodes: {sorted(n or '-' for n in nodes)}"
        )
