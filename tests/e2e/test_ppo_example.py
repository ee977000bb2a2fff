"""`kubectl apply -f examples/k8s/ppo-sort.yaml` trains to Succeeded: real pods, real PPO.

The example's manifest as it ships, shortened (fewer episodes and prompts) so
that it fits a test; the pods the operator creates run as processes (the test
kubelet's PodRunner). Its progress is read where a user reads it: the driver's
Prometheus endpoint (at the driver pod's IP) while it trains, and the job's
columns in `kubectl get rlhfjobs`: EPISODE, REWARD and ETA while it trains (the
operator reads the driver's metrics into status.progress), and the final figures
once it has Succeeded. While it trains, a
stranger (an address no pod of the job published) sends every port of its pods
the payloads of ``strangers``: each but the metrics port drops it unread
(SECURITY.md, the address filter).
"""

from __future__ import annotations

import random
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from gangs import REPO
from operator_proc import job, running_operator, wait_for
from prometheus_client.parser import text_string_to_metric_families
from strangers import STRANGER, UNREAD, job_ports, labelled, payloads_of, sweep

from cluster import Cluster

EXAMPLE = REPO / "examples" / "k8s" / "ppo-sort.yaml"
EPISODES = 24  # about 10 s of training: time to see its progress live


def shortened(path: Path) -> Path:
    manifest = yaml.safe_load(EXAMPLE.read_text())
    spec = manifest["spec"]
    spec["entrypoint"]["args"] = ["--quiet", "--prompts", "256", "--eval-prompts", "32"]
    spec["runtime"].update(
        num_episode=EPISODES,
        sample_per_episode=32,
        generation_batch_size=16,
        train_micro_batch_size=16,
        train_global_batch_size=32,
        eval_episode_interval=EPISODES,
        enable_eval_before_training=False,
        save_episode_interval=EPISODES,
    )
    spec["runPolicy"]["backoffLimit"] = 0  # a failure here is a bug, not something to retry
    out = path / "ppo-sort.yaml"
    out.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return out


def driver_metrics(cluster: Cluster, namespace: str, pod: str) -> dict[str, float]:
    """rlhfjob_episode and rlhfjob_reward_mean{module="reward"} from the driver's /metrics."""
    found = cluster.kubectl_run("get", "pod", pod, "-n", namespace, "-o", "json", check=False)
    if found.returncode != 0:
        return {}
    status = yaml.safe_load(found.stdout).get("status") or {}
    if status.get("phase") != "Running" or not status.get("podIP"):
        return {}
    url = f"http://{status['podIP']}:9090/metrics"  # the pod's metrics containerPort
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "rlhfjob_episode":
                out["episode"] = sample.value
            if sample.name == "rlhfjob_reward_mean" and sample.labels.get("module") == "reward":
                out["reward"] = sample.value
    return out


def live_progress(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    """While the job runs and before its last episode: its status.progress and its
    ``kubectl get rlhfjobs`` line; {} otherwise."""
    status = job(cluster, namespace, name).get("status") or {}
    found = status.get("progress") or {}
    if status.get("phase") != "Running" or not 1 <= found.get("episode", 0) < EPISODES:
        return {}
    if "eta" not in found:
        return {}
    table = cluster.kubectl_run("get", "rlhfjobs", "-n", namespace).stdout
    return {"progress": found, "table": table}


def strangers_on_every_port(job_name: str) -> dict[tuple[str, int], tuple[str, list[str]]]:
    """Every payload of ``strangers`` from an address outside the job (a pod of another
    job) to every port the job's pods listen on: port -> (role, outcomes)."""
    ports = job_ports(job_name)
    with ThreadPoolExecutor(8) as pool:
        seen = pool.map(lambda p: sweep(p, STRANGER, payloads_of(random.Random(p[1]))), ports)
        return {port: (ports[port][0], got) for port, got in zip(ports, seen, strict=True)}


def test_ppo_example_applied_with_kubectl_trains_to_succeeded(
    cluster: Cluster,
    namespace: str,
    pods: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name, driver = "ppo-sort", "ppo-sort-driver-g0"
    with running_operator(cluster, namespace, backoff=1.0):
        t0 = time.perf_counter()
        cluster.kubectl_run("apply", "-n", namespace, "-f", str(shortened(tmp_path)))
        seen: dict[str, float] = {}
        outside: dict[tuple[str, int], tuple[str, list[str]]] = {}
        failed_sweeps: list[str] = []

        live: dict[str, Any] = {}

        def finished() -> bool:
            if not live:
                live.update(live_progress(cluster, namespace, name))
            seen.update(driver_metrics(cluster, namespace, driver))
            if seen.get("episode", 0) >= 1 and not outside and not failed_sweeps:
                try:
                    outside.update(strangers_on_every_port(name))
                except Exception as exc:  # wait_for would retry it silently
                    failed_sweeps.append(repr(exc))
            phase = (job(cluster, namespace, name).get("status") or {}).get("phase")
            assert phase not in ("Failed", "Restarting"), job(cluster, namespace, name)["status"]
            return phase == "Succeeded"

        try:
            wait_for(finished, what="the PPO job Succeeded", timeout=900)
        finally:
            print(f"--- driver log ---\n{pods.log(namespace, driver)[-6000:]}")
        took = time.perf_counter() - t0
        table = cluster.kubectl_run("get", "rlhfjobs", "-n", namespace).stdout
        status = job(cluster, namespace, name)["status"]
        cluster.kubectl_run(
            "delete", "rlhfjob", name, "-n", namespace, "--wait=true", "--timeout=240s", timeout=250
        )
        wait_for(lambda: not pods.running(namespace), what="every pod process gone")
    with capsys.disabled():
        print(f"\n{table}PPO example (shortened to {EPISODES} episodes), 6 pods: {took:.0f} s")
        print(f"driver metrics while it trained: {seen}")
        print(f"kubectl get rlhfjobs while it trained:\n{live.get('table', '')}")
        print(f"status.progress then: {live.get('progress')}")
        print(f"a stranger at {STRANGER} on the pods' {len(outside)} listening ports:")
        for port, (role, got) in sorted(outside.items()):
            print(f"    {port[0]}:{port[1]} {role:12} {'; '.join(labelled(got))}")

    header, row = table.splitlines()[:2]
    columns = dict(zip(header.split(), row.split(), strict=False))
    assert columns["PHASE"] == "Succeeded"
    assert int(columns["EPISODE"]) == EPISODES == status["episode"]
    assert float(columns["REWARD"]) == status["reward"]
    assert 0.0 < status["reward"] <= 1.0  # the sort task's reward: fraction of digits right
    # The driver's own endpoint showed training under way, reward included.
    assert 1 <= seen.get("episode", 0) <= EPISODES, seen
    assert 0.0 < seen["reward"] <= 1.0
    # The operator's own status showed it too, mid-run: progress, and EPISODE, REWARD and
    # ETA in kubectl's columns.
    assert live, "no status.progress seen while the job ran"
    during = dict(zip(*(line.split() for line in live["table"].splitlines()[:2]), strict=False))
    assert during["PHASE"] == "Running" and 1 <= int(during["EPISODE"]) < EPISODES, during
    assert 0.0 <= float(during["REWARD"]) <= 1.0 and during["ETA"].endswith("Z"), during
    assert live["progress"]["numEpisode"] == EPISODES
    assert live["progress"]["samplesPerSecond"] > 0
    # Every port but the driver's metrics (9090, open to Prometheus) dropped the stranger
    # before a byte was read, and the job went on to Succeeded (backoffLimit 0).
    assert not failed_sweeps, failed_sweeps
    assert len(outside) >= 6 + 6, outside  # each pod's gloo and TensorPipe at least
    for port, (role, got) in outside.items():
        if port[1] != 9090:
            assert set(got) <= UNREAD, (port, role, got)
    # The driver printed the example's reward table, one row per episode.
    log = pods.log(namespace, driver)
    assert "episode  reward  eval/reward" in log
    assert f"\n{EPISODES:>7}  " in log
