"""A killed operator resumes without duplicating anything, and how fast a 16-replica job
gets its pods (printed, never asserted)."""

from __future__ import annotations

import json
import random
import time
from typing import Any

import pytest
from malformed import wide_manifest
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
            apply(cluster, namespace, wide_manifest(name))
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
    apply(cluster, namespace, wide_manifest("stopped", replicas=2))  # something to reconcile
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
        apply(cluster, namespace, wide_manifest("twice", replicas=4, backoffLimit=5))
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


KINDS = ("Pod", "Service", "ConfigMap", "Secret", "NetworkPolicy")
CHAOS_RUNS = 20
SCENARIOS = ("create", "restart", "succeed", "delete")


def _owned(cluster: Cluster, namespace: str, name: str) -> list[dict[str, Any]]:
    """Everything labelled as the job's, of every kind the operator creates."""
    kinds = "pods,services,configmaps,secrets,networkpolicies"
    found = cluster.kubectl_run(
        "get", kinds, "-n", namespace, "-l", f"rlhf.dev/job={name}", "-o", "json"
    ).stdout
    return list(json.loads(found)["items"])


def _check(
    cluster: Cluster, namespace: str, name: str, *, phase: str, restarts: int
) -> dict[str, Any]:
    """No duplicate, no orphan, the status right: what a restarted operator must leave."""
    obj = job(cluster, namespace, name)
    status = obj["status"]
    assert (status["phase"], status["restarts"], status["restartGeneration"]) == (
        phase,
        restarts,
        restarts,
    ), status
    gen = status["restartGeneration"]
    live = [
        p
        for p in pods(cluster, namespace, name)
        if not p["metadata"].get("deletionTimestamp")
        and p["status"].get("phase") not in ("Succeeded", "Failed")
    ]
    names = sorted(p["metadata"]["name"] for p in live)
    if phase == "Running":
        wanted = [f"{name}-driver-g{gen}"] + [f"{name}-policy-{i}-g{gen}" for i in range(3)]
        assert names == sorted(wanted), names  # the gang, once: no duplicate, none missing
        assert status["readyReplicas"] == status["replicas"] == 4
    else:
        assert names == [], names  # a finished job runs nothing
    for item in _owned(cluster, namespace, name):
        owners = item["metadata"].get("ownerReferences") or []
        assert [o["uid"] for o in owners if o.get("controller")] == [obj["metadata"]["uid"]], (
            f"{item['kind']} {item['metadata']['name']} is not owned by the job"
        )
    return obj


def test_operator_killed_at_random_points_of_reconciliation(
    cluster: Cluster, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGKILL the operator at a random moment after each of the changes it reconciles
    (a job created, a pod failed, the driver succeeded, the job deleted), start it again:
    each time the gang exists once, nothing is orphaned, the status says what happened."""
    kubelet = cluster.kubelet
    if kubelet is None:
        pytest.skip("needs the test kubelet")
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    print(f"seed {seed}")
    op = Operator(cluster, namespace, backoff=0.5).start()
    kills, lines = 0, []
    try:
        for run in range(CHAOS_RUNS):
            scenario, name = SCENARIOS[run % len(SCENARIOS)], f"chaos-{run}"
            apply(cluster, namespace, wide_manifest(name, replicas=3, backoffLimit=3))
            if scenario != "create":
                wait_phase(cluster, namespace, name, "Running", timeout=90)
            if scenario == "restart":
                kubelet.finish_pod(namespace, f"{name}-policy-{rng.randrange(3)}-g0", 1)
            elif scenario == "succeed":
                kubelet.finish_pod(namespace, f"{name}-driver-g0", 0)
            elif scenario == "delete":
                cluster.kubectl_run("delete", "rlhfjob", name, "-n", namespace, "--wait=false")
            delay = rng.uniform(0.0, 1.5)
            time.sleep(delay)
            op.kill()
            kills += 1
            op.start()
            if scenario == "delete":
                wait_for(
                    lambda n=name: not _owned(cluster, namespace, n), what=f"{name}'s objects gone"
                )
                gone = cluster.kubectl_run("get", "rlhfjob", name, "-n", namespace, check=False)
                assert gone.returncode != 0 and "NotFound" in gone.stderr
            else:
                phase = "Succeeded" if scenario == "succeed" else "Running"
                restarts = 1 if scenario == "restart" else 0
                wait_phase(cluster, namespace, name, phase, timeout=90)
                wait_for(
                    lambda n=name, p=phase, r=restarts: _settled(cluster, namespace, n, p, r),
                    what=f"{name} settled",
                )
                _check(cluster, namespace, name, phase=phase, restarts=restarts)
                cluster.kubectl_run("delete", "rlhfjob", name, "-n", namespace, "--wait=false")
            lines.append(f"  {name}: {scenario}, operator killed {delay:.2f} s later: ok")
        assert op.stop() == 0
    except BaseException:
        print(op.log()[-8000:])
        raise
    finally:
        op.cleanup()
    with capsys.disabled():
        print(f"\n  seed {seed}\n" + "\n".join(lines))
        print(
            f"  operator restarts: {kills}/{CHAOS_RUNS} survived "
            "(no duplicate pod, no orphan, status right)"
        )


def _settled(cluster: Cluster, namespace: str, name: str, phase: str, restarts: int) -> bool:
    """The restarted operator finished what the killed one left: _check passes."""
    try:
        _check(cluster, namespace, name, phase=phase, restarts=restarts)
    except AssertionError:
        return False
    return True


def test_sixteen_replicas_apply_to_pods_created(
    cluster: Cluster, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with running_operator(cluster, namespace) as op:
        # Let the operator finish starting, so the figure is the reconcile, not the boot.
        wait_for(lambda: "rlhfjob_operator_jobs" in op.metrics(), what="operator metrics")
        time.sleep(1.0)
        t0 = time.perf_counter()
        apply(cluster, namespace, wide_manifest("sixteen"))
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
