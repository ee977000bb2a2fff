"""The job's NetworkPolicy selects exactly its own pods, against the real API server.

Pods of two jobs (one name a prefix of the other, a restarted generation
among them) and a pod wearing the job's label in another namespace are
created from the operator's own builders; the policy is created too, read
back, and its podSelector and ingress peers are evaluated by the API server
as label-selector queries. They must give this job's pods and no others:
the rendezvous and RPC ports are then reachable from them only, the metrics
port from anywhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client as k8s
from malformed import base_manifest
from operator_proc import apply, install_crd, job

from cluster import Cluster
from rlhfjob_operator.kube.manifests import build_gang, build_network_policy
from rlhfjob_operator.plan import JobPlan, plan_job
from rlhfjob_operator.spec import RLHFJob, load_job

# No node has it: the pods stay unscheduled, so no kubelet acts on them.
_NOWHERE = {"rlhf.dev/test": "unschedulable"}


@pytest.fixture
def other_namespace(control_plane: Cluster) -> Iterator[str]:
    with control_plane.namespace("np-other-") as name:
        yield name


def _job(cluster: Cluster, namespace: str, name: str) -> tuple[RLHFJob, JobPlan]:
    """An RLHFJob applied for real (its pods need its uid) and its plan."""
    apply(cluster, namespace, base_manifest(name))
    raw = job(cluster, namespace, name)
    parsed = load_job({k: raw[k] for k in ("apiVersion", "kind", "metadata", "spec")})
    return parsed, plan_job(parsed)


def _create_pods(core: k8s.CoreV1Api, pods: list[dict[str, Any]], namespace: str) -> set[str]:
    for pod in pods:
        pod["metadata"]["namespace"] = namespace
        pod["spec"]["nodeSelector"] = _NOWHERE
        core.create_namespaced_pod(namespace, pod)
    return {p["metadata"]["name"] for p in pods}


def _selected(core: k8s.CoreV1Api, namespace: str, selector: dict[str, Any]) -> set[str]:
    """The pods of ``namespace`` a LabelSelector selects, as the API server evaluates it."""
    assert set(selector) == {"matchLabels"}, selector  # no expressions to evaluate by hand
    query = ",".join(f"{k}={v}" for k, v in selector["matchLabels"].items())
    assert query, "an empty selector selects every pod"
    return {
        p.metadata.name for p in core.list_namespaced_pod(namespace, label_selector=query).items
    }


def test_policy_selects_exactly_this_jobs_pods(
    control_plane: Cluster, namespace: str, other_namespace: str
) -> None:
    install_crd(control_plane)
    core = k8s.CoreV1Api(control_plane.api_client)
    net = k8s.NetworkingV1Api(control_plane.api_client)
    ours, ours_plan = _job(control_plane, namespace, "np")
    theirs, theirs_plan = _job(control_plane, namespace, "np-2")

    mine = _create_pods(core, build_gang(ours, ours_plan, generation=0), namespace)
    mine |= _create_pods(core, build_gang(ours, ours_plan, generation=1)[:1], namespace)
    others = _create_pods(core, build_gang(theirs, theirs_plan, generation=0), namespace)
    # The job's label in another namespace: same labels, other trust domain.
    elsewhere = build_gang(ours, ours_plan, generation=0)[:1]
    for pod in elsewhere:
        pod["metadata"].pop("ownerReferences")
    _create_pods(core, elsewhere, other_namespace)
    assert len(mine) == ours_plan.world_size + 1 and others and not mine & others

    policy = build_network_policy(ours, ours_plan)
    net.create_namespaced_network_policy(namespace, policy)
    stored = net.read_namespaced_network_policy(policy["metadata"]["name"], namespace)
    spec = control_plane.api_client.sanitize_for_serialization(stored)["spec"]

    assert spec["policyTypes"] == ["Ingress"]
    assert _selected(core, namespace, spec["podSelector"]) == mine
    own, metrics = spec["ingress"]
    # From this job's pods, any port (TensorPipe listens on ephemeral ones) ...
    assert "ports" not in own
    (peer,) = own["from"]
    assert set(peer) == {"podSelector"}, peer  # no namespaceSelector: this namespace only
    assert _selected(core, namespace, peer["podSelector"]) == mine
    # ... and from anywhere to the metrics port only.
    assert "from" not in metrics
    assert metrics["ports"] == [{"port": ours_plan.metrics_port, "protocol": "TCP"}]
    # The other job's pods carry a policy of their own, selecting only them.
    theirs_policy = build_network_policy(theirs, theirs_plan)["spec"]
    assert _selected(core, namespace, theirs_policy["podSelector"]) == others
