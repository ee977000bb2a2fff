"""Evict a pod of a running gang through the Eviction API (policy/v1, what a drain and
a preemption use): the gang stops with an emergency checkpoint, the operator restarts
it without counting a restart, and it ends on the weights of an uninterrupted run.

On the test control plane: the API server marks the pod (DisruptionTarget, reason
EvictionByEvictionAPI) and deletes it with its grace period, the pod runner SIGTERMs
its process, the operator deletes the rest of the gang and starts the next
generation once the old one is gone. Periodic checkpoints are rare (episodes 4 and
8): the new generation resuming from any other episode used the emergency one.

RLHFJOB_EVICT_RUNS runs (default 1), each evicting a random pod after a random
episode; seeds and outcomes are printed, never timed.
"""

from __future__ import annotations

import os
import random
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from gangs import (
    RUNTIME,
    Checkpoints,
    checkpoint_claim,
    differing,
    final_weights,
    gang_manifest,
    running_pods,
)
from kubernetes import client as k8s
from operator_proc import apply, events, running_operator, wait_for, wait_phase
from podrunner import PodRunner

from cluster import Cluster

RUNS = int(os.environ.get("RLHFJOB_EVICT_RUNS", "1"))
PERIODIC = 4  # checkpoints at episodes 4 and 8 only: an emergency one is any other
VICTIMS = ("driver", "actor-scorer-0", "learner-0")
# Kubernetes' default terminationGracePeriodSeconds, which a kubelet honours (PodRunner
# caps it at its own grace): the stop at the episode's end fits in it on a loaded host.
GRACE_S = 30.0
_RESUMED = re.compile(r"resumed from \S+/episode_(\d{6}) \(episode (\d+)\)")


@dataclass
class _Evictions:
    """One namespace, pod runner, operator and claim for all runs, the weights of an
    uninterrupted run of the same job, and how the runs went."""

    cluster: Cluster
    namespace: str
    pods: PodRunner
    checkpoints: Checkpoints
    reference: dict[str, Any]
    lines: list[str] = field(default_factory=list)
    uncounted: int = 0  # restarted once, not counted, from an emergency checkpoint
    identical: int = 0


def _manifest(name: str, claim: str) -> dict[str, Any]:
    """The small job with episodes of at least 0.5 s (the stop lands in the episode the
    eviction came in) and a checkpoint every PERIODIC episodes."""
    manifest = gang_manifest(name, claim=claim)
    manifest["spec"]["runtime"]["save_episode_interval"] = PERIODIC
    manifest["spec"]["models"]["actor"] = {"args": {"pause": 0.25}}
    return manifest


@pytest.fixture(scope="module")
def evictions(cluster: Cluster) -> Iterator[_Evictions]:
    with (
        cluster.namespace("e2e-") as namespace,
        running_pods(cluster, grace=GRACE_S) as pods,
        checkpoint_claim(cluster, namespace) as checkpoints,
        running_operator(cluster, namespace, backoff=1.0),
    ):
        apply(cluster, namespace, _manifest("reference", checkpoints.claim))
        wait_phase(cluster, namespace, "reference", "Succeeded", timeout=300)
        reference = final_weights(checkpoints.path / "reference")
        yield _Evictions(cluster, namespace, pods, checkpoints, reference)
        cluster.kubectl_run("delete", "rlhfjobs", "--all", "-n", namespace, "--wait=false")
        wait_for(lambda: not pods.running(namespace), what="every pod process gone", timeout=120)


def _evict(cluster: Cluster, namespace: str, pod: str) -> None:
    """POST pods/<pod>/eviction: what `kubectl drain` and a descheduler do."""
    body = k8s.V1Eviction(metadata=k8s.V1ObjectMeta(name=pod, namespace=namespace))
    k8s.CoreV1Api(cluster.api_client).create_namespaced_pod_eviction(pod, namespace, body)


@pytest.mark.parametrize("run", range(RUNS))
def test_an_evicted_pod_stops_the_gang_with_an_emergency_checkpoint_and_resumes_bitwise(
    evictions: _Evictions, run: int, capsys: pytest.CaptureFixture[str]
) -> None:
    g, seed = evictions, random.randrange(2**32)
    rng = random.Random(seed)
    victim, after = rng.choice(VICTIMS), rng.choice([1, 5])
    name = f"evict-{run}"
    pod, total = f"{name}-{victim}-g0", RUNTIME["num_episode"]
    apply(g.cluster, g.namespace, _manifest(name, g.checkpoints.claim))
    wait_for(
        lambda: f"episode {after}/{total} " in g.pods.log(g.namespace, f"{name}-driver-g0"),
        what=f"episode {after} done",
        timeout=300,
    )
    time.sleep(rng.uniform(0.0, 0.05))
    assert g.pods.pid(g.namespace, pod) is not None, f"{pod} ended before its eviction"
    _evict(g.cluster, g.namespace, pod)
    status = wait_phase(g.cluster, g.namespace, name, "Succeeded", timeout=300)["status"]
    # The old driver stopped with an emergency checkpoint; the new one resumed from it.
    old, new = (g.pods.log(g.namespace, f"{name}-driver-g{n}") for n in (0, 1))
    resumed = _RESUMED.search(new)
    assert resumed is not None, new[-3000:]
    episode = int(resumed[2])
    assert int(resumed[1]) == episode
    assert f"stopped after episode {episode} (SIGTERM to " in old, old[-3000:]
    assert f": saved episode {episode}" in old, old[-3000:]
    restarting = [e["message"] for e in events(g.cluster, g.namespace, name)]
    restarting = [m for m in restarting if "restarting the gang" in m]
    diff = differing(g.reference, final_weights(g.checkpoints.path / name))
    g.uncounted += (status["restarts"], status["restartGeneration"]) == (0, 1) and bool(
        episode % PERIODIC
    )
    g.identical += not diff
    line = (
        f"eviction run {run}, seed {seed}: {victim} evicted after episode {after}; stopped "
        f"after episode {episode} with an emergency checkpoint, resumed from it; "
        f"{status['restarts']} counted restart(s); "
        + ("identical weights" if not diff else f"DIFFERENT: {diff[:3]}")
    )
    g.lines.append(line)
    g.cluster.kubectl_run("delete", "rlhfjob", name, "-n", g.namespace, "--wait=false")
    with capsys.disabled():
        print(f"\n  {line}")
        if len(g.lines) == RUNS:
            print(
                f"  operator: {g.uncounted}/{RUNS} evictions restarted the gang once, uncounted, "
                f"from an emergency checkpoint; {g.identical}/{RUNS} runs ended with weights "
                "bitwise equal to an uninterrupted run's"
            )
    # Taken in the episode after `after` (a loaded machine may see it one later): never a
    # periodic checkpoint's episode.
    assert episode in (after + 1, after + 2) and episode % PERIODIC != 0, episode
    assert status["restarts"] == 0 and status["restartGeneration"] == 1, status
    assert len(restarting) == 1, restarting
    assert restarting[0].startswith(f"pod {pod} disrupted ("), restarting
    assert "restarting the gang from the checkpoint it saves as it stops" in restarting[0]
    assert restarting[0].endswith(", disrupted (not counted)"), restarting
    assert diff == []
