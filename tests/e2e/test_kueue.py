"""RLHFJobs admitted and preempted by the real Kueue (v0.17, Pod integration) as whole
gangs: a job labelled `kueue.x-k8s.io/queue-name` puts each generation's pods in one
Kueue pod group (operator/rlhfjob_operator/kube/kueue.py).

The ClusterQueue's quota is 8 GPUs and each job asks for 8 (actor and learner pods, 4
each; the fake GPU nodes have 8 each, so the scheduler alone would run two jobs at
once). Its one ResourceFlavor puts `nvidia.com/gpu.present: "true"` in the admitted
pods' nodeSelector: Kueue's placement reaches the pods.

- Two jobs: the first runs; every pod of the second exists, gated by Kueue, none bound
  to a node, and its status says so; when the first ends the second is admitted and
  ends on the same weights (same seed).
- A high-priority job preempts a running low-priority one: Kueue evicts the low job's
  pod group, its driver stops with an emergency checkpoint (periodic ones are only at
  the last episode), the operator restarts it uncounted, the new generation waits gated
  until the high job is done, then resumes from that checkpoint and ends on the high
  job's weights, bitwise.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from gangs import RUNTIME, Checkpoints, checkpoint_claim, differing, final_weights, gang_manifest
from gangs import running_pods as pod_runner
from operator_proc import apply, job, pods, running_operator, wait_for
from podrunner import PodRunner

from cluster import Cluster, Kueue, Missing, wait_until

QUEUE = "gpus"
ADMISSION_GATE = "kueue.x-k8s.io/admission"
PLACEMENT = {"nvidia.com/gpu.present": "true"}
GRACE_S = 30.0  # as tests/e2e/test_eviction.py: the stop at an episode's end fits in it
_RESUMED = re.compile(r"resumed from \S+/episode_(\d{6}) \(episode (\d+)\)")


@dataclass
class _Queue:
    cluster: Cluster
    kueue: Kueue
    namespace: str
    pods: PodRunner
    checkpoints: Checkpoints

    def wait(self, predicate: Any, *, what: str, timeout: float) -> Any:
        """wait_until (an AssertionError ends it), whose TimeoutError also shows Kueue's
        Workloads and log."""
        try:
            return wait_until(predicate, what=what, timeout=timeout, fatal=(AssertionError,))
        except TimeoutError as e:
            wl = self.cluster.kubectl_run(
                "get",
                "workloads",
                "-n",
                self.namespace,
                "-o",
                "jsonpath={range .items[*]}"
                "{.metadata.name}{' '}{.status.conditions[*].type}={.status.conditions[*].status}"
                "{' '}{.status.conditions[*].message}{'\\n'}{end}",
                check=False,
            ).stdout
            pods = self.cluster.kubectl_run(
                "get",
                "pods",
                "-n",
                self.namespace,
                "-o",
                "jsonpath={range .items[*]}"
                "{.metadata.name}{' '}{.status.phase}{' del='}{.metadata.deletionTimestamp}"
                "{' fin='}{.metadata.finalizers}{' ann='}{.metadata.annotations}{'\\n'}{end}",
                check=False,
            ).stdout
            raise TimeoutError(
                f"{e}\n--- workloads ---\n{wl}\n--- pods ---\n{pods}\n--- kueue ---\n"
                f"{self.kueue.log_tail(30)}"
            ) from None  # fmt: skip

    def phase(self, name: str, phase: str, *, timeout: float) -> dict[str, Any]:
        """The job's status once in `phase` (AssertionError if it Failed instead)."""

        def reached() -> dict[str, Any] | None:
            status = job(self.cluster, self.namespace, name).get("status") or {}
            if status.get("phase") == "Failed" != phase:
                raise AssertionError(f"{name} failed: {status}")
            return status if status.get("phase") == phase else None

        return dict(self.wait(reached, what=f"{name} {phase}", timeout=timeout))


def _kueue_objects(namespace: str) -> list[dict[str, Any]]:
    """A flavor, a ClusterQueue of 8 GPUs that preempts lower priorities, its LocalQueue
    in `namespace`, and two WorkloadPriorityClasses (names scoped by the namespace)."""
    api = "kueue.x-k8s.io/v1beta2"
    flavor, cq = f"{namespace}-gpu", f"{namespace}-cq"
    resources = [
        {"name": "cpu", "nominalQuota": "64"},
        {"name": "memory", "nominalQuota": "256Gi"},
        {"name": "nvidia.com/gpu", "nominalQuota": "8"},
    ]
    return [
        {"apiVersion": api, "kind": "ResourceFlavor", "metadata": {"name": flavor},
         "spec": {"nodeLabels": PLACEMENT}},
        {"apiVersion": api, "kind": "ClusterQueue", "metadata": {"name": cq},
         "spec": {
             "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
             "preemption": {"withinClusterQueue": "LowerPriority"},
             "resourceGroups": [{
                 "coveredResources": [r["name"] for r in resources],
                 "flavors": [{"name": flavor, "resources": resources}],
             }],
         }},
        {"apiVersion": api, "kind": "LocalQueue",
         "metadata": {"name": QUEUE, "namespace": namespace}, "spec": {"clusterQueue": cq}},
        {"apiVersion": api, "kind": "WorkloadPriorityClass",
         "metadata": {"name": f"{namespace}-low"}, "value": 100},
        {"apiVersion": api, "kind": "WorkloadPriorityClass",
         "metadata": {"name": f"{namespace}-high"}, "value": 1000},
    ]  # fmt: skip


@pytest.fixture(scope="module")
def queue(cluster: Cluster) -> Iterator[_Queue]:
    try:
        kueue = Kueue(cluster).start()
    except Missing as exc:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(str(exc), pytrace=False)
        pytest.skip(str(exc))
    objects = []
    try:
        namespace = kueue.namespace()
        objects = _kueue_objects(namespace)
        for obj in objects:
            apply(cluster, namespace, obj)
        with (
            pod_runner(cluster, grace=GRACE_S) as runner,
            checkpoint_claim(cluster, namespace) as checkpoints,
            running_operator(cluster, namespace, backoff=1.0) as operator,
        ):
            # Listening before the first test starts (the leftover check's baseline).
            wait_for(operator.metrics, what="the operator's metrics port", timeout=60)
            yield _Queue(cluster, kueue, namespace, runner, checkpoints)
            cluster.kubectl_run("delete", "rlhfjobs", "--all", "-n", namespace, "--wait=false")
            wait_for(lambda: not runner.running(namespace), what="every pod gone", timeout=120)
    except BaseException:
        print(f"--- kueue log (tail) ---\n{kueue.log_tail(80)}")
        raise
    finally:
        kueue.stop()
        for obj in reversed(objects):
            if obj["kind"] != "LocalQueue":  # went with the namespace
                cluster.kubectl_run(
                    "delete", obj["kind"].lower(), obj["metadata"]["name"], "--wait=false",
                    check=False,
                )  # fmt: skip


def _manifest(name: str, q: _Queue, priority: str | None = None) -> dict[str, Any]:
    """The small job asking for 8 GPUs, queued; checkpoints only at its last episode."""
    manifest = gang_manifest(name, claim=q.checkpoints.claim)
    labels = {"kueue.x-k8s.io/queue-name": QUEUE}
    if priority is not None:
        labels["kueue.x-k8s.io/priority-class"] = f"{q.namespace}-{priority}"
    manifest["metadata"]["labels"] = labels
    spec = manifest["spec"]
    spec["runtime"]["save_episode_interval"] = RUNTIME["num_episode"]
    spec["models"]["actor"] = {"args": {"pause": 0.25}, "num_gpu": 4}
    spec["models"]["learner"] = {"trainable": True, "num_gpu": 4}
    return manifest


def _gated(pod: dict[str, Any]) -> bool:
    gates = [g["name"] for g in pod["spec"].get("schedulingGates") or []]
    return ADMISSION_GATE in gates


def _placed(pod: dict[str, Any]) -> bool:
    """A pod asking for GPUs has the flavor's node labels (the driver asks for nothing:
    Kueue assigns it no flavor)."""
    asks = any(
        "nvidia.com/gpu" in (c.get("resources") or {}).get("requests", {})
        for c in pod["spec"]["containers"]
    )
    return not asks or PLACEMENT.items() <= (pod["spec"].get("nodeSelector") or {}).items()


def _admitted(q: _Queue, name: str, generation: int = 0) -> list[dict[str, Any]]:
    """The generation's pods once every one is bound to a node (else [])."""
    found = [p for p in pods(q.cluster, q.namespace, name) if p["metadata"]["name"].endswith(
        f"-g{generation}")]  # fmt: skip
    return found if found and all(p["spec"].get("nodeName") for p in found) else []


def test_a_second_job_waits_gated_until_the_first_ends_then_runs_to_the_same_weights(
    queue: _Queue,
) -> None:
    q = queue
    apply(q.cluster, q.namespace, _manifest("first", q))
    running = q.wait(lambda: _admitted(q, "first"), what="first admitted", timeout=180)
    apply(q.cluster, q.namespace, _manifest("second", q))
    waiting = wait_for(
        lambda: len(found := pods(q.cluster, q.namespace, "second")) == 3 and found,
        what="the second job's three pods",
        timeout=60,
    )
    message = wait_for(
        lambda: "waiting for Kueue" in (m := job(q.cluster, q.namespace, "second").get(
            "status", {}).get("message", "")) and m,
        what="the second job saying it waits for Kueue",
        timeout=60,
    )  # fmt: skip
    # While the first runs: every pod of the second gated by Kueue, none on a node.
    first_status = job(q.cluster, q.namespace, "first")["status"]
    second = pods(q.cluster, q.namespace, "second")
    assert first_status["phase"] in ("Starting", "Running"), first_status
    assert all(_gated(p) and not p["spec"].get("nodeName") for p in second), second
    assert message == f"waiting for Kueue to admit the gang (queue {QUEUE})"
    assert all(_placed(p) for p in running), [p["spec"].get("nodeSelector") for p in running]
    assert len(waiting) == 3

    q.phase("first", "Succeeded", timeout=300)
    admitted = q.wait(lambda: _admitted(q, "second"), what="second admitted", timeout=180)
    assert all(not _gated(p) for p in admitted)
    assert all(_placed(p) for p in admitted), [p["spec"].get("nodeSelector") for p in admitted]
    status = q.phase("second", "Succeeded", timeout=300)
    assert status["restarts"] == 0 and status["restartGeneration"] == 0, status
    path = q.checkpoints.path
    assert differing(final_weights(path / "first"), final_weights(path / "second")) == []


def test_a_higher_priority_job_preempts_a_running_one_which_resumes_from_its_checkpoint(
    queue: _Queue, capsys: pytest.CaptureFixture[str]
) -> None:
    q, total = queue, RUNTIME["num_episode"]
    apply(q.cluster, q.namespace, _manifest("low", q, priority="low"))
    wait_for(
        lambda: f"episode 1/{total} " in q.pods.log(q.namespace, "low-driver-g0"),
        what="low's episode 1 done",
        timeout=300,
    )
    apply(q.cluster, q.namespace, _manifest("high", q, priority="high"))
    high = q.phase("high", "Succeeded", timeout=400)
    low = q.phase("low", "Succeeded", timeout=400)
    old, new = (q.pods.log(q.namespace, f"low-driver-g{n}") for n in (0, 1))
    resumed = _RESUMED.search(new)
    assert resumed is not None, new[-3000:]
    episode = int(resumed[2])
    path = q.checkpoints.path
    diff = differing(final_weights(path / "high"), final_weights(path / "low"))
    with capsys.disabled():
        print(
            f"\n  kueue preemption: low stopped after episode {episode}/{total} with an "
            f"emergency checkpoint; restarts {low['restarts']}, generation "
            f"{low['restartGeneration']}; resumed from it after high ended; "
            + ("identical weights" if not diff else f"DIFFERENT: {diff[:3]}")
        )
    assert f"stopped after episode {episode} (SIGTERM to " in old, old[-3000:]
    assert f": saved episode {episode}" in old, old[-3000:]
    assert 1 <= episode < total, episode  # not the periodic (last) checkpoint
    assert low["restarts"] == 0 and low["restartGeneration"] == 1, low
    assert high["restarts"] == 0 and high["restartGeneration"] == 0, high
    assert diff == []
