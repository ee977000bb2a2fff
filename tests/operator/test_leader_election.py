"""Two operator replicas with ``--leader-elect`` against the test control plane: one
leads, the other stands by (its liveness answered); the leader SIGKILLed at a random
point of a 16-replica job's creation is replaced by the standby within the lease
duration, with no pod created twice; a pod that fails while no replica leads is acted
on by the next leader; a clean stop releases the Lease. The rules on a fake clock:
tests/unit/operator/test_lease_rules.py."""

from __future__ import annotations

import random
import subprocess
import sys
import time
import urllib.request

import pytest
from malformed import wide_manifest
from operator_proc import (
    REPO,
    Operator,
    apply,
    free_port,
    get_json,
    install_crd,
    job,
    pods,
    wait_for,
    wait_phase,
)

from cluster import Cluster

LEASE = "ops-lease"
# Short, so that the test's takeovers take seconds; the rule stays client-go's.
TIMING = ("--leader-elect-lease-duration", "4", "--leader-elect-renew-deadline", "3")


@pytest.fixture(scope="module")
def cluster(control_plane: Cluster) -> Cluster:
    install_crd(control_plane)
    return control_plane


def _replica(cluster: Cluster, namespace: str) -> tuple[Operator, str]:
    """An operator with leader election, and its liveness URL."""
    health = f"http://127.0.0.1:{free_port()}/healthz"
    op = Operator(
        cluster,
        namespace,
        extra_args=(
            "--leader-elect",
            "--leader-elect-resource-namespace",
            namespace,
            "--leader-elect-resource-name",
            LEASE,
            *TIMING,
            "--leader-elect-retry-period",
            "0.5",
            "--liveness",
            health,
        ),
    )
    return op, health


def _leading(op: Operator) -> float | None:
    """The replica's rlhfjob_operator_leader, or None while its metrics are not up."""
    try:
        text = op.metrics()
    except OSError:
        return None
    (line,) = [ln for ln in text.splitlines() if ln.startswith("rlhfjob_operator_leader ")]
    return float(line.split()[1])


def _holder(cluster: Cluster, namespace: str) -> str | None:
    lease = get_json(cluster, "lease", LEASE, "-n", namespace)
    return lease["spec"].get("holderIdentity")


def _live(cluster: Cluster, namespace: str, name: str) -> list[str]:
    return sorted(
        p["metadata"]["name"]
        for p in pods(cluster, namespace, name)
        if p["status"].get("phase") not in ("Succeeded", "Failed")
        and not p["metadata"].get("deletionTimestamp")
    )


def test_the_standby_takes_over_a_killed_leader_with_nothing_twice_or_lost(
    cluster: Cluster, namespace: str
) -> None:
    kubelet = cluster.kubelet
    if kubelet is None:
        pytest.skip("needs the test kubelet (not available with an external KUBECONFIG)")
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    print(f"seed {seed}")
    (a, a_health), (b, b_health) = _replica(cluster, namespace), _replica(cluster, namespace)
    health = {a: a_health, b: b_health}
    try:
        a.start()
        b.start()

        def one_leads() -> tuple[Operator, Operator] | None:
            seen = {op: _leading(op) for op in (a, b)}
            if sorted(v for v in seen.values() if v is not None) != [0.0, 1.0]:
                return None
            return (a, b) if seen[a] == 1.0 else (b, a)

        leader, standby = wait_for(one_leads, what="one replica leading, one standing by")
        holder = _holder(cluster, namespace)
        assert holder and f"held as {holder}" in leader.log()
        assert "standing by: lease" in standby.log()
        with urllib.request.urlopen(health[standby], timeout=5) as resp:
            assert resp.status == 200 and b"standing by" in resp.read()

        # The leader dies at a random point of creating a 17-pod gang.
        apply(cluster, namespace, wide_manifest("ha", backoffLimit=2))
        target = rng.randint(1, 16)
        created = wait_for(
            lambda: (n := len(pods(cluster, namespace, "ha"))) >= target and n,
            what=f"{target} pods created",
        )
        leader.kill()
        killed_at = time.monotonic()
        wait_for(lambda: _leading(standby) == 1.0, what="the standby leading", timeout=30)
        print(
            f"killed with {created}/17 pods; standby led {time.monotonic() - killed_at:.1f} s later"
        )
        obj = wait_phase(cluster, namespace, "ha", "Running", timeout=90)
        names = _live(cluster, namespace, "ha")
        assert len(names) == 17 and all(n.endswith("-g0") for n in names), names
        assert obj["status"]["restarts"] == 0 and obj["status"]["restartGeneration"] == 0
        assert _holder(cluster, namespace) != holder

        # The killed replica comes back, as its Deployment restarts it, and stands by.
        leader.start()
        wait_for(lambda: _leading(leader) == 0.0, what="the restarted replica on standby")
        # A pod fails the moment the leader dies: no replica leads when its event comes.
        standby.kill()
        kubelet.finish_pod(namespace, "ha-policy-3-g0", 1, reason="Error", message="boom")
        wait_for(lambda: _leading(leader) == 1.0, what="the restarted replica leading", timeout=30)

        def restarted_once() -> bool:
            status = job(cluster, namespace, "ha").get("status") or {}
            return status.get("phase") == "Running" and status.get("restartGeneration") == 1

        wait_for(restarted_once, what="the gang restarted once, Running again", timeout=90)
        status = job(cluster, namespace, "ha")["status"]
        assert status["restarts"] == 1, status
        names = _live(cluster, namespace, "ha")
        assert len(names) == 17 and all(n.endswith("-g1") for n in names), names

        # A clean stop gives the Lease up at once.
        assert leader.stop() == 0
        assert _holder(cluster, namespace) is None
    except BaseException:
        for name, op in (("a", a), ("b", b)):
            print(f"--- replica {name} log (tail) ---\n{op.log()[-6000:]}")
        raise
    finally:
        a.cleanup()
        b.cleanup()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (
            ("--leader-elect-resource-namespace", "x", "--leader-elect-lease-duration", "3"),
            "the lease duration (3 s) must be longer than the renew deadline (10 s)",
        ),
        ((), "--leader-elect-resource-namespace: not in a pod"),
    ],
    ids=["lease shorter than the renew deadline", "no namespace outside a pod"],
)
def test_a_leader_election_that_cannot_work_stops_the_operator_with_a_message(
    cluster: Cluster, args: tuple[str, ...], says: str
) -> None:
    argv = [sys.executable, "-m", "rlhfjob_operator", "--kubeconfig", str(cluster.kubeconfig)]
    proc = subprocess.run(
        [*argv, "--leader-elect", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert proc.returncode == 2, proc.stderr
    assert f"leader election: {says}" in proc.stderr
