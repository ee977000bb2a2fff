"""The test control plane is a real one: RBAC, scheduling by GPU requests,
garbage collection, the real kubectl and helm, and the test kubelet."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from cluster import GPU, Cluster, wait_until

TIMEOUT = 60  # seconds; every wait below is bounded by it


def _kubelet(cluster: Cluster) -> Any:
    if cluster.kubelet is None:
        pytest.skip("needs the test kubelet (KUBECONFIG names another cluster)")
    return cluster.kubelet


def _pod(name: str, *, gpus: int = 0, restart_policy: str = "Never") -> dict[str, Any]:
    resources: dict[str, Any] = {"requests": {"cpu": "100m", "memory": "64Mi"}}
    if gpus:
        resources["limits"] = {GPU: str(gpus)}
    return {
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": restart_policy,
            "containers": [
                {
                    "name": "main",
                    "image": "busybox:1.36",
                    # Runs until deleted on a real cluster too.
                    "command": ["sleep", "3600"],
                    "resources": resources,
                }
            ],
        },
    }


def _phase(core: k8s.CoreV1Api, ns: str, name: str) -> str:
    return str(core.read_namespaced_pod(name, ns).status.phase)


def _gpus_per_node(core: k8s.CoreV1Api) -> dict[str, int]:
    return {
        n.metadata.name: int((n.status.allocatable or {}).get(GPU, "0"))
        for n in core.list_node().items
    }


def test_api_server_requires_authentication_and_rbac(control_plane: Cluster) -> None:
    cp = control_plane.control_plane
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with pytest.raises(urllib.error.HTTPError) as anonymous:
        urllib.request.urlopen(f"{control_plane.server}/api/v1/pods", context=ctx, timeout=10)
    assert anonymous.value.code in (401, 403)

    if cp is None:
        pytest.skip("minting a user certificate needs our own CA")
    nobody = k8s.CoreV1Api(cp.client_for("nobody", groups=["rlhfjob:testers"]))
    with pytest.raises(ApiException) as refused:
        nobody.list_namespaced_pod("default")
    assert refused.value.status == 403
    assert "nobody" in str(refused.value.body)

    # Granting a Role through RBAC is what lets the same user in.
    ns = control_plane.create_namespace("rbac-")
    try:
        rbac = k8s.RbacAuthorizationV1Api(control_plane.api_client)
        rbac.create_namespaced_role(
            ns,
            {
                "metadata": {"name": "pod-reader"},
                "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}],
            },
        )
        rbac.create_namespaced_role_binding(
            ns,
            {
                "metadata": {"name": "nobody-reads-pods"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": "pod-reader",
                },
                "subjects": [
                    {"kind": "User", "name": "nobody", "apiGroup": "rbac.authorization.k8s.io"}
                ],
            },
        )
        wait_until(lambda: nobody.list_namespaced_pod(ns) is not None, timeout=TIMEOUT, what="RBAC")
        with pytest.raises(ApiException) as still_refused:
            nobody.list_namespaced_pod("default")
        assert still_refused.value.status == 403

        # A ServiceAccount's bound token (TokenRequest, signed by the SA key)
        # authenticates, and RBAC gives it nothing by default.
        core = k8s.CoreV1Api(control_plane.api_client)
        core.create_namespaced_service_account(ns, {"metadata": {"name": "robot"}})
        kubeconfig = cp.kubeconfig_for_service_account(ns, "robot")
        denied = control_plane.kubectl_run(
            "--kubeconfig", str(kubeconfig), "get", "pods", "-n", ns, check=False
        )
        assert denied.returncode != 0
        assert f"system:serviceaccount:{ns}:robot" in denied.stderr
        assert "forbidden" in denied.stderr.lower()
    finally:
        control_plane.delete_namespace(ns)


def test_gpu_nodes_advertise_nvidia_gpu(control_plane: Cluster) -> None:
    core = k8s.CoreV1Api(control_plane.api_client)
    nodes = core.list_node().items
    gpu_nodes = [n for n in nodes if int(n.status.allocatable.get(GPU, "0")) > 0]
    if control_plane.kubelet is None and not gpu_nodes:
        pytest.skip("the cluster named by KUBECONFIG has no GPU nodes")
    assert gpu_nodes, [n.metadata.name for n in nodes]
    for n in gpu_nodes:
        assert n.metadata.labels.get("nvidia.com/gpu.present") == "true"
        ready = {c.type: c.status for c in n.status.conditions}
        assert ready["Ready"] == "True"
    if control_plane.kubelet is not None:
        assert sorted(n.metadata.name for n in nodes) == ["cpu-0", "cpu-1", "gpu-0", "gpu-1"]
        assert {n.metadata.name: n.status.capacity.get(GPU) for n in gpu_nodes} == {
            "gpu-0": "8",
            "gpu-1": "8",
        }


def test_gpu_pod_is_scheduled_on_a_gpu_node_and_runs(
    control_plane: Cluster, namespace: str
) -> None:
    core = k8s.CoreV1Api(control_plane.api_client)
    gpu_nodes = {name for name, n in _gpus_per_node(core).items() if n > 0}
    if not gpu_nodes:
        pytest.skip("no node advertises nvidia.com/gpu")
    core.create_namespaced_pod(namespace, _pod("trainer", gpus=1))
    wait_until(
        lambda: _phase(core, namespace, "trainer") == "Running",
        timeout=TIMEOUT,
        what="the GPU pod to run",
    )
    pod = core.read_namespaced_pod("trainer", namespace)
    assert pod.spec.node_name in gpu_nodes
    assert {c.type: c.status for c in pod.status.conditions}["Ready"] == "True"
    assert pod.status.container_statuses[0].ready
    kubelet = _kubelet(control_plane)
    errors_before = len(kubelet.errors)  # the kubelet is shared by the session
    assert pod.spec.node_name in {"gpu-0", "gpu-1"}
    assert pod.status.pod_ip == "127.0.0.1"

    assert kubelet.finish_pod(namespace, "trainer", exit_code=3, reason="Error") == "Failed"
    pod = core.read_namespaced_pod("trainer", namespace)
    assert pod.status.phase == "Failed"
    assert pod.status.container_statuses[0].state.terminated.exit_code == 3
    assert kubelet.errors[errors_before:] == []


def test_finish_pod_succeeds_and_restart_policy_restarts(
    control_plane: Cluster, namespace: str
) -> None:
    kubelet = _kubelet(control_plane)
    core = k8s.CoreV1Api(control_plane.api_client)
    core.create_namespaced_pod(namespace, _pod("driver"))
    core.create_namespaced_pod(namespace, _pod("worker", restart_policy="OnFailure"))
    for name in ("driver", "worker"):
        wait_until(
            lambda n=name: _phase(core, namespace, n) == "Running", timeout=TIMEOUT, what=name
        )
    assert kubelet.finish_pod(namespace, "driver", 0) == "Succeeded"
    assert kubelet.finish_pod(namespace, "worker", 1) == "Running"
    worker = core.read_namespaced_pod("worker", namespace).status.container_statuses[0]
    assert worker.restart_count == 1
    assert worker.last_state.terminated.exit_code == 1


class _Recorder:
    """A PodHandler that leaves pods Pending and records the calls."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.stopped: list[str] = []

    def start(self, kubelet: Any, pod: Any) -> None:
        self.started.append(pod.metadata.name)

    def stop(self, kubelet: Any, pod: Any) -> None:
        self.stopped.append(pod.metadata.name)


def test_kubelet_hands_pods_to_its_handler(control_plane: Cluster, namespace: str) -> None:
    kubelet = _kubelet(control_plane)
    errors_before = len(kubelet.errors)  # the kubelet is shared by the session
    core = k8s.CoreV1Api(control_plane.api_client)
    with kubelet.using(_Recorder()) as recorder:
        core.create_namespaced_pod(namespace, _pod("held"))
        wait_until(lambda: recorder.started == ["held"], timeout=TIMEOUT, what="handler.start")
        pod = core.read_namespaced_pod("held", namespace)
        assert pod.spec.node_name in kubelet.node_names
        assert pod.status.phase == "Pending"  # the handler did not start it

        kubelet.mark_running(namespace, "held")
        assert _phase(core, namespace, "held") == "Running"

        core.delete_namespaced_pod("held", namespace)
        wait_until(lambda: recorder.stopped == ["held"], timeout=TIMEOUT, what="handler.stop")
        wait_until(
            lambda: not core.list_namespaced_pod(namespace).items,
            timeout=TIMEOUT,
            what="the kubelet to confirm the deletion",
        )
    assert kubelet.errors[errors_before:] == []


def test_too_many_gpus_stays_pending_unschedulable(control_plane: Cluster, namespace: str) -> None:
    core = k8s.CoreV1Api(control_plane.api_client)
    most = max(_gpus_per_node(core).values())
    core.create_namespaced_pod(namespace, _pod("greedy", gpus=most + 1))

    def unschedulable() -> bool:
        pod = core.read_namespaced_pod("greedy", namespace)
        conds = {c.type: c for c in pod.status.conditions or []}
        sched = conds.get("PodScheduled")
        return sched is not None and sched.status == "False" and sched.reason == "Unschedulable"

    wait_until(unschedulable, timeout=TIMEOUT, what="the scheduler to refuse the pod")
    pod = core.read_namespaced_pod("greedy", namespace)
    assert pod.status.phase == "Pending"
    assert pod.spec.node_name is None
    assert "nvidia.com/gpu" in {c.type: c for c in pod.status.conditions}["PodScheduled"].message


def test_deleting_an_owner_deletes_its_dependents(control_plane: Cluster, namespace: str) -> None:
    core = k8s.CoreV1Api(control_plane.api_client)
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "dependent", "ownerReferences": [ref]}}
    )
    pod = _pod("dependent-pod")
    pod["metadata"]["ownerReferences"] = [ref]
    core.create_namespaced_pod(namespace, pod)
    wait_until(
        lambda: _phase(core, namespace, "dependent-pod") == "Running", timeout=TIMEOUT, what="pod"
    )

    core.delete_namespaced_config_map("owner", namespace)

    def gone() -> bool:
        names = {c.metadata.name for c in core.list_namespaced_config_map(namespace).items}
        pods = core.list_namespaced_pod(namespace).items
        return "dependent" not in names and not pods

    wait_until(gone, timeout=TIMEOUT, what="the garbage collector to delete the dependents")


def test_real_kubectl_lists_nodes(control_plane: Cluster) -> None:
    out = control_plane.kubectl_run("get", "nodes", "-o", "json").stdout
    names = {n["metadata"]["name"] for n in json.loads(out)["items"]}
    assert names
    if control_plane.kubelet is not None:
        assert names == {"cpu-0", "cpu-1", "gpu-0", "gpu-1"}
    version = json.loads(control_plane.kubectl_run("version", "-o", "json").stdout)
    assert version["clientVersion"]["major"] == "1"
    assert version["serverVersion"]["gitVersion"].startswith("v1.")
    can_i = control_plane.kubectl_run("auth", "can-i", "create", "pods", "--all-namespaces")
    assert can_i.stdout.strip() == "yes"


def test_real_helm_runs(control_plane: Cluster) -> None:
    out = control_plane.helm_run("version", "--short").stdout
    assert out.startswith("v4."), out
    # helm reaches the API server through the same kubeconfig.
    listed = control_plane.helm_run("list", "--all-namespaces", "-o", "json").stdout
    assert json.loads(listed) == []
