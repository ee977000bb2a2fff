"""Gang placement against the real kube-scheduler: the operator's scheduling gate keeps
an incomplete gang off the nodes, and a PodGroup is created for a gang scheduler.

Two GPU nodes of 8 GPUs each (the session's fake nodes); each job is a driver and two
8-GPU workers, so one job's gang fills the pool. Job B comes first, but a
ResourceQuota lets only one of its workers exist: without the gate the scheduler
would bind that worker, and job A, applied next, could place only one of its own
(two partial gangs, neither can rendezvous). With the gate, B's pods stay unbound,
A's gang is placed whole, and B's is placed whole once A is done and the quota lets
B's last pod exist.

The test kubelet only reports bound pods Running (no processes run), so the test
watches what the scheduler decides: ``spec.nodeName`` over time, sampled every
0.1 s, in one consistent list per namespace.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client as k8s
from malformed import base_manifest
from operator_proc import apply, install_crd, job, pods, running_operator, wait_for, wait_phase

from cluster import GPU, Cluster

GATE = "rlhf.dev/gang"
GANG = 3  # driver + 2 workers


@pytest.fixture(scope="module")
def cluster(control_plane: Cluster) -> Cluster:
    if control_plane.kubelet is None:
        pytest.skip("needs the test kubelet and its two 8-GPU nodes")
    install_crd(control_plane)
    return control_plane


def _gang_job(name: str, **run_policy: Any) -> dict[str, Any]:
    m = copy.deepcopy(base_manifest(name))
    m["spec"]["models"] = {"policy": {"num_gpu": 8, "num_replica": 2}}
    if run_policy:
        m["spec"]["runPolicy"] = run_policy
    return m


def _gated(pod: Any) -> bool:
    return any(g.name == GATE for g in pod.spec.scheduling_gates or [])


class Sampler:
    """Lists each namespace's pods every 0.1 s on a thread of its own and checks, on
    every list, that no pod of a generation is bound before every pod of it exists."""

    def __init__(self, cluster: Cluster, namespaces: list[str]) -> None:
        self.api = cluster.new_api_client()
        self.core = k8s.CoreV1Api(self.api)
        self.namespaces = namespaces
        self.violations: list[str] = []
        self.errors: list[str] = []
        self.complete: set[tuple[str, str]] = set()  # (job, generation) seen whole
        self.samples = 0
        self.states: set[str] = set()  # what was seen, per job: "b:2 gated, 0 bound"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gang-sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.api.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            for ns in self.namespaces:
                try:
                    items = self.core.list_namespaced_pod(ns, label_selector="rlhf.dev/job").items
                except k8s.ApiException as exc:  # counted against the sample total
                    self.errors.append(repr(exc))
                    continue
                self._check(items)
            self.samples += 1
            self._stop.wait(0.1)

    def _check(self, items: list[Any]) -> None:
        gens: dict[tuple[str, str], list[Any]] = {}
        for pod in items:
            if pod.metadata.deletion_timestamp is not None:
                continue
            labels = pod.metadata.labels
            gens.setdefault((labels["rlhf.dev/job"], labels["rlhf.dev/generation"]), []).append(pod)
        for (name, gen), group in gens.items():
            bound = [p.metadata.name for p in group if p.spec.node_name]
            gated = [p.metadata.name for p in group if _gated(p)]
            self.states.add(f"{name}:{len(group)} pods, {len(gated)} gated, {len(bound)} bound")
            if len(group) == GANG:
                self.complete.add((name, gen))
            # Once whole, pods may go (a finished gang's are deleted), and the gates are
            # lifted one pod at a time, so a pod may bind before its peers' gates go.
            if bound and (name, gen) not in self.complete:
                self.violations.append(f"{name} g{gen}: {bound} bound, {len(group)} of {GANG} pods")


@pytest.fixture
def other_namespace(cluster: Cluster) -> Iterator[str]:
    with cluster.namespace("t-gang-") as name:
        yield name


def _gpu_pods_bound(cluster: Cluster) -> list[str]:
    core = k8s.CoreV1Api(cluster.api_client)
    return [
        f"{p.metadata.namespace}/{p.metadata.name}"
        for p in core.list_pod_for_all_namespaces().items
        if p.spec.node_name in ("gpu-0", "gpu-1")
        and any(GPU in (c.resources.requests or {}) for c in p.spec.containers)
    ]


def test_an_incomplete_gang_stays_off_the_nodes_and_a_complete_one_is_placed(
    cluster: Cluster, namespace: str, other_namespace: str
) -> None:
    # Pods of earlier tests may still be going from the shared nodes.
    wait_for(lambda: not _gpu_pods_bound(cluster), what="GPU nodes free", timeout=90)
    core = k8s.CoreV1Api(cluster.api_client)
    ns_b, ns_a = namespace, other_namespace
    quota = {"metadata": {"name": "gpus"}, "spec": {"hard": {f"requests.{GPU}": "8"}}}
    core.create_namespaced_resource_quota(ns_b, quota)
    wait_for(
        lambda: core.read_namespaced_resource_quota("gpus", ns_b).status.hard or {},
        what="the quota's status (quota controller)",
    )
    with (
        running_operator(cluster, ns_b),
        running_operator(cluster, ns_a),
        Sampler(cluster, [ns_b, ns_a]) as sampler,
    ):
        apply(cluster, ns_b, _gang_job("gang-b"))
        wait_for(lambda: len(pods(cluster, ns_b, "gang-b")) == 2, what="gang-b: 2 of 3 pods")
        apply(cluster, ns_a, _gang_job("gang-a"))
        wait_phase(cluster, ns_a, "gang-a", "Running", timeout=90)

        # A's gang took both GPU nodes; B's two pods exist, unbound, gated, and the
        # scheduler says so.
        a_pods = pods(cluster, ns_a, "gang-a")
        workers = [p for p in a_pods if p["metadata"]["labels"]["rlhf.dev/role"] != "driver"]
        assert sorted(p["spec"]["nodeName"] for p in workers) == ["gpu-0", "gpu-1"]
        assert all(not p["spec"].get("schedulingGates") for p in a_pods)
        b_pods = pods(cluster, ns_b, "gang-b")
        assert len(b_pods) == 2
        for pod in b_pods:
            assert "nodeName" not in pod["spec"]
            assert pod["spec"]["schedulingGates"] == [{"name": GATE}]
            cond = {c["type"]: c for c in pod["status"]["conditions"]}["PodScheduled"]
            assert (cond["status"], cond["reason"]) == ("False", "SchedulingGated")

        # A ends and frees the GPUs; the quota grows; B's gang is completed, lifted, placed.
        assert cluster.kubelet is not None
        cluster.kubelet.finish_pod(ns_a, "gang-a-driver-g0", 0)
        wait_phase(cluster, ns_a, "gang-a", "Succeeded")
        core.patch_namespaced_resource_quota(
            "gpus", ns_b, {"spec": {"hard": {f"requests.{GPU}": "16"}}}
        )
        wait_phase(cluster, ns_b, "gang-b", "Running", timeout=90)
        b_pods = pods(cluster, ns_b, "gang-b")
        assert len(b_pods) == GANG and all(p["spec"].get("nodeName") for p in b_pods)
        assert all(not p["spec"].get("schedulingGates") for p in b_pods)
    print(f"{sampler.samples} samples; states seen: {sorted(sampler.states)}")
    assert sampler.samples > 20 and len(sampler.errors) < sampler.samples / 10
    assert not sampler.violations, sampler.violations[:5]
    assert "gang-b:2 pods, 2 gated, 0 bound" in sampler.states
    assert "gang-a:3 pods, 0 gated, 3 bound" in sampler.states


# -- a PodGroup for scheduler-plugins' coscheduling ------------------------------------

# Just enough of scheduler-plugins' PodGroup for the API server to store one (our own
# schema: an object it keeps as given).
_PODGROUP_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "podgroups.scheduling.x-k8s.io"},
    "spec": {
        "group": "scheduling.x-k8s.io",
        "scope": "Namespaced",
        "names": {"plural": "podgroups", "singular": "podgroup", "kind": "PodGroup"},
        "versions": [
            {
                "name": "v1alpha1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "x-kubernetes-preserve-unknown-fields": True,
                    }
                },
            }
        ],
    },
}


@pytest.fixture
def podgroup_crd(cluster: Cluster) -> Iterator[None]:
    apply(cluster, "default", _PODGROUP_CRD)
    cluster.kubectl_run(
        "wait", "--for=condition=Established", "crd/podgroups.scheduling.x-k8s.io", "--timeout=60s"
    )
    try:
        yield
    finally:
        cluster.kubectl_run("delete", "crd", "podgroups.scheduling.x-k8s.io", "--wait=false")


def test_a_coscheduling_podgroup_is_created_per_generation_and_named_by_the_pods(
    cluster: Cluster, namespace: str, podgroup_crd: None
) -> None:
    policy = {"schedulingPolicy": {"minAvailable": 2, "podGroup": {"kind": "coscheduling"}}}
    manifest = _gang_job("grouped", **policy)
    manifest["spec"]["models"]["policy"]["num_gpu"] = 1
    with running_operator(cluster, namespace):
        apply(cluster, namespace, manifest)
        # No schedulerName: the default scheduler places it once the gate is lifted.
        obj = wait_phase(cluster, namespace, "grouped", "Running", timeout=90)
        group = cluster.kubectl_run(
            "get", "podgroups.scheduling.x-k8s.io", "grouped-g0", "-n", namespace, "-o", "json"
        ).stdout
    pg = json.loads(group)
    assert pg["spec"] == {"minMember": 2}
    (owner,) = pg["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"]) == ("RLHFJob", obj["metadata"]["uid"])
    items = pods(cluster, namespace, "grouped")
    assert len(items) == GANG
    for pod in items:
        assert pod["metadata"]["labels"]["scheduling.x-k8s.io/pod-group"] == "grouped-g0"
        assert pod["spec"]["nodeName"] and not pod["spec"].get("schedulingGates")
    assert job(cluster, namespace, "grouped")["status"]["readyReplicas"] == GANG


def test_without_the_schedulers_podgroup_crd_no_pod_is_created_and_the_log_says_why(
    cluster: Cluster, namespace: str
) -> None:
    discovered = cluster.kubectl_run("api-resources", "--api-group=scheduling.volcano.sh").stdout
    if "podgroups" in discovered:
        pytest.skip("this cluster has Volcano's PodGroup CRD")
    manifest = _gang_job("novolcano", schedulingPolicy={"podGroup": {"kind": "volcano"}})
    with running_operator(cluster, namespace) as op:
        apply(cluster, namespace, manifest)
        wait_for(
            lambda: "is that scheduler's PodGroup CRD installed?" in op.log(),
            what="the operator saying the PodGroup CRD is missing",
        )
        assert pods(cluster, namespace, "novolcano") == []
