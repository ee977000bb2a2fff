"""The real operator against the real control plane: a job's whole life, driven with the
real kubectl and the test kubelet (which marks pods Running and finishes them on cue)."""

from __future__ import annotations

import copy
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from malformed import base_manifest
from operator_proc import (
    REPO,
    Operator,
    apply,
    events,
    install_crd,
    job,
    pods,
    running_operator,
    wait_for,
    wait_phase,
)

from cluster import Cluster

GPU = "nvidia.com/gpu"


@pytest.fixture(scope="module")
def cluster(control_plane: Cluster) -> Cluster:
    install_crd(control_plane)
    return control_plane


@pytest.fixture
def operator(cluster: Cluster, namespace: str) -> Iterator[Operator]:
    with running_operator(cluster, namespace) as op:
        yield op


def _small(name: str, **run_policy: Any) -> dict[str, Any]:
    m = copy.deepcopy(base_manifest(name))
    if run_policy:
        m["spec"]["runPolicy"] = run_policy
    return m


def _kubelet(cluster: Cluster) -> Any:
    if cluster.kubelet is None:
        pytest.skip("needs the test kubelet (not available with an external KUBECONFIG)")
    return cluster.kubelet


def _names(items: list[dict[str, Any]], *, live: bool = True) -> set[str]:
    return {
        p["metadata"]["name"]
        for p in items
        if not live or p.get("status", {}).get("phase") not in ("Succeeded", "Failed")
    }


def _table(cluster: Cluster, namespace: str) -> list[dict[str, str]]:
    """``kubectl get rlhfjobs`` as rows keyed by the header, cut at the header's offsets
    (an empty column is an empty string)."""
    lines = cluster.kubectl_run("get", "rlhfjobs", "-n", namespace).stdout.splitlines()
    header = lines[0]
    names = header.split()
    starts = [header.index(n) for n in names]
    ends = [*starts[1:], None]
    return [
        {n: line[a:b].strip() for n, a, b in zip(names, starts, ends, strict=True)}
        for line in lines[1:]
    ]


def _condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in obj["status"].get("conditions", []) if c["type"] == type_), None)


def test_example_runs_on_gpu_nodes_and_succeeds(
    cluster: Cluster, namespace: str, operator: Operator
) -> None:
    kubelet = _kubelet(cluster)
    apply(cluster, namespace, REPO / "examples" / "k8s" / "ppo-sort.yaml")
    obj = wait_phase(cluster, namespace, "ppo-sort", "Running")
    items = pods(cluster, namespace, "ppo-sort")
    assert len(items) == 6  # driver + policy, ppo_policy, ppo_value, reference+reward, value
    for pod in items:
        node = pod["spec"]["nodeName"]
        assert node.startswith("gpu-"), f"{pod['metadata']['name']} on {node}"
        res = pod["spec"]["containers"][0]["resources"]
        if pod["metadata"]["labels"]["rlhf.dev/role"] != "driver":
            assert res["limits"][GPU] == "1" and res["requests"][GPU] == "1"
        assert pod["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]
    assert obj["status"]["models"]["policy"] == {"replicas": 1, "ready": 1}
    assert obj["status"]["readyReplicas"] == 6
    assert _condition(obj, "Running")["status"] == "True"  # type: ignore[index]

    # Episode progress on the driver pod shows in the printer columns.
    driver = "ppo-sort-driver-g0"
    cluster.kubectl_run("annotate", "pod", driver, "-n", namespace, "rlhf.dev/episode=12")
    wait_for(
        lambda: job(cluster, namespace, "ppo-sort")["status"].get("episode") == 12,
        what="episode 12 in status",
    )
    (row,) = _table(cluster, namespace)
    assert list(row) == [
        "NAME",
        "PHASE",
        "EPISODE",
        "REWARD",
        "ETA",
        "RESTARTS",
        "DISRUPTIONS",
        "AGE",
    ]
    assert row | {"AGE": ""} == {
        "NAME": "ppo-sort",
        "PHASE": "Running",
        "EPISODE": "12",
        "REWARD": "",  # the driver's metrics or termination message bring it (tests/e2e)
        "ETA": "",  # no driver process serves metrics here: no live progress
        "RESTARTS": "0",
        "DISRUPTIONS": "0",
        "AGE": "",
    }
    assert row["AGE"].endswith("s")

    kubelet.finish_pod(namespace, driver, 0)
    obj = wait_phase(cluster, namespace, "ppo-sort", "Succeeded")
    assert obj["status"]["completionTime"]
    assert _condition(obj, "Succeeded")["status"] == "True"  # type: ignore[index]
    # The workers are deleted; the driver pod stays for its logs.
    wait_for(
        lambda: _names(pods(cluster, namespace, "ppo-sort"), live=False) == {driver},
        what="worker pods deleted after success",
    )
    reasons = [e["reason"] for e in events(cluster, namespace, "ppo-sort")]
    assert {"Created", "Running", "Succeeded"} <= set(reasons)
    # Owned objects exist.
    for kind, name in (
        ("service", "ppo-sort"),
        ("configmap", "ppo-sort-spec"),
        ("networkpolicy", "ppo-sort"),
    ):
        cluster.kubectl_run("get", kind, name, "-n", namespace)
    text = operator.metrics()
    assert "rlhfjob_operator_reconciles_total" in text
    assert 'rlhfjob_operator_jobs{phase="Succeeded"} 1.0' in text
    assert "rlhfjob_operator_pods_created_total 6.0" in text


def test_failed_pod_restarts_the_gang_until_the_backoff_limit(
    cluster: Cluster, namespace: str, operator: Operator
) -> None:
    kubelet = _kubelet(cluster)
    apply(cluster, namespace, _small("flaky", backoffLimit=1))
    wait_phase(cluster, namespace, "flaky", "Running")
    g0 = _names(pods(cluster, namespace, "flaky"))
    assert len(g0) == 6 and all(n.endswith("-g0") for n in g0)

    kubelet.finish_pod(namespace, "flaky-policy-1-g0", 1, reason="Error", message="boom")
    obj = wait_for(
        lambda: (j := job(cluster, namespace, "flaky"))["status"].get("restarts") == 1 and j,
        what="restarts 1",
    )
    assert _condition(obj, "Restarting")["status"] == "True"  # type: ignore[index]
    obj = wait_phase(cluster, namespace, "flaky", "Running")
    assert obj["status"]["restartGeneration"] == 1
    live = _names(pods(cluster, namespace, "flaky"))
    assert len(live) == 6 and all(n.endswith("-g1") for n in live)
    env = {
        e["name"]: e.get("value", "")
        for e in next(
            p
            for p in pods(cluster, namespace, "flaky")
            if p["metadata"]["name"] == "flaky-driver-g1"
        )["spec"]["containers"][0]["env"]
    }
    assert env["RLHFJOB_RESTART_GENERATION"] == "1"
    (row,) = _table(cluster, namespace)
    assert (row["PHASE"], row["EPISODE"], row["RESTARTS"]) == ("Running", "", "1")

    kubelet.finish_pod(namespace, "flaky-reward-0-g1", 137, reason="OOMKilled")
    obj = wait_phase(cluster, namespace, "flaky", "Failed")
    failed = _condition(obj, "Failed")
    assert failed is not None and failed["reason"] == "BackoffLimitExceeded"
    assert "flaky-reward-0-g1" in failed["message"] and "137" in failed["message"]
    wait_for(lambda: not _names(pods(cluster, namespace, "flaky")), what="gang deleted")
    warnings = [e for e in events(cluster, namespace, "flaky") if e["type"] == "Warning"]
    assert {"Restarting", "BackoffLimitExceeded"} <= {e["reason"] for e in warnings}
    assert "rlhfjob_operator_gang_restarts_total 1.0" in operator.metrics()


def test_failure_policy_rules_restart_uncounted_then_fail_the_job(
    cluster: Cluster, namespace: str, operator: Operator
) -> None:
    """runPolicy.failurePolicy through the API server (its schema and CEL rules) and the
    operator: exit 1 restarts uncounted by the first rule, exit 3 of the reward pod
    fails the job by the second, whatever backoffLimit is left."""
    kubelet = _kubelet(cluster)
    rules = [
        {"action": "RestartNotCounting", "onExitCodes": {"operator": "In", "values": [1]}},
        {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [3], "role": "reward"}},
    ]
    apply(cluster, namespace, _small("ruled", backoffLimit=5, failurePolicy={"rules": rules}))
    wait_phase(cluster, namespace, "ruled", "Running")
    kubelet.finish_pod(namespace, "ruled-policy-1-g0", 1, reason="Error")
    obj = wait_for(
        lambda: (j := job(cluster, namespace, "ruled"))["status"].get("disruptions") == 1 and j,
        what="disruptions 1",
    )
    assert obj["status"].get("restarts", 0) == 0
    wait_phase(cluster, namespace, "ruled", "Running")
    kubelet.finish_pod(namespace, "ruled-reward-0-g1", 3, reason="Error")
    obj = wait_phase(cluster, namespace, "ruled", "Failed")
    failed = _condition(obj, "Failed")
    assert failed is not None and failed["reason"] == "FailurePolicy"
    assert "ruled-reward-0-g1 failed (exit code 3" in failed["message"]
    assert "FailJob by runPolicy.failurePolicy.rules[1]" in failed["message"]
    assert obj["status"].get("restarts", 0) == 0


def test_a_gang_the_scheduler_cannot_place_times_out_and_the_policy_fails_it(
    cluster: Cluster, namespace: str, operator: Operator
) -> None:
    """runPolicy.startupTimeoutSeconds with the real scheduler: a reward pod asking for
    more GPUs than any node has stays Unschedulable; 3 s after the gang was created the
    job fails by the rule on PodScheduled=False, naming the pod and the scheduler's
    reason."""
    _kubelet(cluster)
    m = _small(
        "unplaced",
        startupTimeoutSeconds=3,
        failurePolicy={
            "rules": [
                {
                    "action": "FailJob",
                    "onPodConditions": [{"type": "PodScheduled", "status": "False"}],
                }
            ]
        },
    )
    m["spec"]["models"]["reward"] = {"num_gpu": 64}
    apply(cluster, namespace, m)
    obj = wait_phase(cluster, namespace, "unplaced", "Failed", timeout=60)
    failed = _condition(obj, "Failed")
    assert failed is not None and failed["reason"] == "FailurePolicy", failed
    assert "pod unplaced-reward-0-g0 not running 3s after its gang was created" in failed["message"]
    assert "Unschedulable" in failed["message"] and "nvidia.com/gpu" in failed["message"]


def test_suspend_and_resume(cluster: Cluster, namespace: str, operator: Operator) -> None:
    _kubelet(cluster)
    apply(cluster, namespace, _small("pausable"))
    wait_phase(cluster, namespace, "pausable", "Running")
    patch = '{"spec": {"runPolicy": {"suspend": %s}}}'
    cluster.kubectl_run(
        "patch", "rlhfjob", "pausable", "-n", namespace, "--type=merge", "-p", patch % "true"
    )
    obj = wait_phase(cluster, namespace, "pausable", "Suspended")
    assert _condition(obj, "Suspended")["status"] == "True"  # type: ignore[index]
    wait_for(lambda: not pods(cluster, namespace, "pausable"), what="pods deleted on suspend")
    cluster.kubectl_run(
        "patch", "rlhfjob", "pausable", "-n", namespace, "--type=merge", "-p", patch % "false"
    )
    obj = wait_phase(cluster, namespace, "pausable", "Running")
    assert _condition(obj, "Suspended")["status"] == "False"  # type: ignore[index]
    assert obj["status"]["restarts"] == 0
    assert all(n.endswith("-g1") for n in _names(pods(cluster, namespace, "pausable")))


def test_active_deadline(cluster: Cluster, namespace: str, operator: Operator) -> None:
    _kubelet(cluster)
    apply(cluster, namespace, _small("slow", activeDeadlineSeconds=3))
    obj = wait_phase(cluster, namespace, "slow", "Failed", timeout=30)
    failed = _condition(obj, "Failed")
    assert failed is not None and failed["reason"] == "DeadlineExceeded"
    wait_for(lambda: not _names(pods(cluster, namespace, "slow")), what="pods deleted")


def test_ttl_after_finished_deletes_the_job(
    cluster: Cluster, namespace: str, operator: Operator
) -> None:
    kubelet = _kubelet(cluster)
    apply(cluster, namespace, _small("brief", ttlSecondsAfterFinished=2))
    wait_phase(cluster, namespace, "brief", "Running")
    kubelet.finish_pod(namespace, "brief-driver-g0", 0)
    wait_phase(cluster, namespace, "brief", "Succeeded")
    wait_for(
        lambda: (
            not cluster.kubectl_run("get", "rlhfjobs", "-n", namespace, "-o", "name").stdout.strip()
        ),
        what="job deleted by its TTL",
        timeout=30,
    )
    # Garbage collection takes what it owned.
    wait_for(lambda: not pods(cluster, namespace, "brief"), what="pods collected", timeout=60)


def test_deleting_the_job_deletes_everything_it_owns(
    cluster: Cluster, namespace: str, operator: Operator
) -> None:
    _kubelet(cluster)
    apply(cluster, namespace, _small("doomed"))
    wait_phase(cluster, namespace, "doomed", "Running")
    cluster.kubectl_run("delete", "rlhfjob", "doomed", "-n", namespace, "--wait=true")

    def gone() -> bool:
        left = cluster.kubectl_run(
            "get",
            "pods,services,configmaps,networkpolicies",
            "-n",
            namespace,
            "-l",
            "rlhf.dev/job=doomed",
            "-o",
            "name",
        ).stdout.strip()
        return not left

    wait_for(gone, what="owned objects garbage-collected", timeout=60)


def test_spec_is_immutable_but_run_policy_is_not(
    cluster: Cluster, namespace: str, operator: Operator
) -> None:
    apply(cluster, namespace, _small("fixed"))
    changed = _small("fixed")
    changed["spec"]["image"] = "other:2"
    proc = cluster.kubectl_run(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input=__import__("yaml").safe_dump(changed),
        check=False,
    )
    assert proc.returncode != 0
    assert "spec.image is immutable" in proc.stderr
    changed = _small("fixed")
    changed["spec"]["models"]["policy"]["num_replica"] = 1
    proc = cluster.kubectl_run(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input=__import__("yaml").safe_dump(changed),
        check=False,
    )
    assert proc.returncode != 0 and "spec.models is immutable" in proc.stderr
    apply(cluster, namespace, _small("fixed", backoffLimit=9))
    assert job(cluster, namespace, "fixed")["spec"]["runPolicy"]["backoffLimit"] == 9


def test_a_spec_only_pydantic_refuses_fails_with_a_reason(
    cluster: Cluster, namespace: str, operator: Operator
) -> None:
    m = _small("clash")
    m["spec"]["models"]["ppo-policy"] = {}  # same pod names as ppo_policy
    apply(cluster, namespace, m)
    obj = wait_phase(cluster, namespace, "clash", "Failed")
    failed = _condition(obj, "Failed")
    assert failed is not None and failed["reason"] == "InvalidSpec"
    assert "ppo-policy" in failed["message"]
    assert not pods(cluster, namespace, "clash")
    assert "InvalidSpec" in {e["reason"] for e in events(cluster, namespace, "clash")}


def test_client_rate_limit_paces_the_operators_requests(cluster: Cluster, namespace: str) -> None:
    """``--kube-api-qps 4 --kube-api-burst 1``: the job's pods, status patches and Events
    go one request at a time, 4 a second, and the waits are counted."""
    _kubelet(cluster)
    limit = ("--kube-api-qps", "4", "--kube-api-burst", "1")
    with running_operator(cluster, namespace, extra_args=limit) as op:
        apply(cluster, namespace, _small("paced"))
        wait_phase(cluster, namespace, "paced", "Running")
        assert len(_names(pods(cluster, namespace, "paced"))) == 6
        (line,) = [
            line
            for line in op.metrics().splitlines()
            if line.startswith("rlhfjob_operator_client_throttled_seconds_total ")
        ]
        # Eight threads create the pods at once: all but one wait for a token.
        assert float(line.split()[1]) > 0, line


def test_a_burst_below_one_stops_the_operator_with_a_message(cluster: Cluster) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlhfjob_operator",
            "--kubeconfig",
            str(cluster.kubeconfig),
            "--kube-api-qps",
            "5",
            "--kube-api-burst",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert proc.returncode == 2
    assert "--kube-api-burst: a burst of 0 admits no request" in proc.stderr


def test_every_unfinished_job_is_resynced(cluster: Cluster, namespace: str) -> None:
    """``--resync-interval``: a suspended job, which no timer and no pod event touches,
    is still reconciled every interval (a lost trigger's safety net); a finished one
    is not."""

    def resyncs() -> float:
        for line in op.metrics().splitlines():
            if line.startswith('rlhfjob_operator_reconciles_total{trigger="resync"}'):
                return float(line.split()[1])
        return 0.0

    with running_operator(cluster, namespace, extra_args=("--resync-interval", "0.5")) as op:
        apply(cluster, namespace, _small("idle", suspend=True))
        wait_phase(cluster, namespace, "idle", "Suspended")
        wait_for(lambda: resyncs() >= 3, what="three resyncs of the suspended job")
        clash = _small("clash")
        clash["spec"]["models"]["ppo-policy"] = {}  # Failed at once: finished
        apply(cluster, namespace, clash)
        wait_phase(cluster, namespace, "clash", "Failed")
        cluster.kubectl_run("delete", "rlhfjob", "idle", "-n", namespace)
        wait_for(lambda: not op.metrics().count('phase="Suspended"} 1.0'), what="idle gone")
        before = resyncs()
        time.sleep(2)  # four intervals: the finished job gets no resync
        assert resyncs() == before


def test_a_gang_stuck_terminating_on_a_lost_node_is_not_waited_for(
    cluster: Cluster, namespace: str, operator: Operator
) -> None:
    """A node's kubelet goes silent with the gang on it, and a pod fails: the next
    generation waits for the old pods, naming them in its Restarting condition, until
    the node is not Ready; then it starts with the old pods still Terminating."""
    kubelet = _kubelet(cluster)
    m = _small("lost", backoffLimit=2)
    m["spec"]["nodeSelector"] = {"kubernetes.io/hostname": "gpu-1"}
    apply(cluster, namespace, m)
    wait_phase(cluster, namespace, "lost", "Running")
    assert {p["spec"]["nodeName"] for p in pods(cluster, namespace, "lost")} == {"gpu-1"}

    def generation(n: int) -> list[dict[str, Any]]:
        return [
            p for p in pods(cluster, namespace, "lost") if p["metadata"]["name"].endswith(f"-g{n}")
        ]

    kubelet.lose_node("gpu-1")
    try:
        kubelet.finish_pod(namespace, "lost-policy-1-g0", 1, reason="Error", message="boom")
        waiting = wait_for(
            lambda: (
                (c := _condition(job(cluster, namespace, "lost"), "Restarting"))
                and c["message"].startswith("waiting for ")
                and c
            ),
            what="the Restarting condition naming the pods waited for",
        )
        assert "pods of earlier generations to stop: lost-driver-g0, " in waiting["message"]
        assert waiting["reason"] == "PodFailed" and "not waiting" not in waiting["message"]
        assert not generation(1)

        kubelet.mark_node_unknown("gpu-1")
        wait_for(lambda: len(generation(1)) == 6, what="generation 1 created")
        stuck = [
            p["metadata"]["name"] for p in generation(0) if p["metadata"].get("deletionTimestamp")
        ]
        assert stuck, "the old pods should still be Terminating on the silent node"
    finally:
        kubelet.recover_node("gpu-1")
    obj = wait_phase(cluster, namespace, "lost", "Running", timeout=120)
    assert (obj["status"]["restarts"], obj["status"]["restartGeneration"]) == (1, 1)
    wait_for(
        lambda: not [p for p in generation(0) if p["metadata"].get("deletionTimestamp")],
        what="the old pods gone once the node is back",
    )
