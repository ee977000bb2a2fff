"""The pod runner itself: what a pod's process sees, how it ends, and how it is stopped.

Pods made directly (no operator), each a small Python command, so that what the
harness gives a process is checked on its own: env values and references, the
pod's IP and DNS name, volumes, exit codes, termination messages, pods held
for a missing Secret, SIGTERM then SIGKILL on deletion.
"""

from __future__ import annotations

import json
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.rest import ApiException
from operator_proc import wait_for
from podrunner import PodRunner

from cluster import Cluster

REPORT = r"""
import json, os, pathlib, socket
env = {k: v for k, v in os.environ.items() if k.startswith("T_")}
files = {p.name: p.read_text() for p in pathlib.Path(os.environ["T_CONFIG"]).iterdir()}
pathlib.Path(os.environ["T_SCRATCH"], "x").write_text("ok")
s = socket.socket()
s.bind((os.environ["T_IP"], 0))  # the pod's own address is bindable
print(json.dumps({"env": env, "files": files, "cwd": os.getcwd(), "tmp": os.environ["TMPDIR"]}))
pathlib.Path(os.environ["RLHFJOB_TERMINATION_LOG"]).write_text("bye")
raise SystemExit(3)
"""


def _pod(name: str, command: list[str], **spec: Any) -> dict[str, Any]:
    container = {"name": "main", "image": "rlhfjob:dev", "command": command}
    container |= spec.pop("container", {})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "restartPolicy": "Never",
            # As the operator's pods: no projected token volume (the runner emulates none).
            "automountServiceAccountToken": False,
            "containers": [container],
            **spec,
        },
    }


def _status(core: k8s.CoreV1Api, namespace: str, name: str) -> Any:
    return core.read_namespaced_pod(name, namespace).status


def test_a_pod_sees_its_env_ip_dns_and_volumes_and_ends_with_its_exit_code(
    cluster: Cluster, namespace: str, pods: PodRunner
) -> None:
    core = k8s.CoreV1Api(cluster.api_client)
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "cfg"}, "data": {"a.txt": "alpha", "k": "from-cm"}}
    )
    core.create_namespaced_secret(
        namespace, {"metadata": {"name": "sec"}, "stringData": {"token": "s3cret"}}
    )
    env = [
        {"name": "T_PLAIN", "value": "plain"},
        {"name": "T_SECRET", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "token"}}},
        {"name": "T_CM", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "k"}}},
        {
            "name": "T_OPTIONAL",
            "valueFrom": {"secretKeyRef": {"name": "nope", "key": "x", "optional": True}},
        },
        {"name": "T_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "T_LABEL", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
        {"name": "T_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "T_PEER", "value": f"tcp://one.grp.{namespace}.svc.cluster.local:29500"},
        {"name": "T_CONFIG", "value": "/etc/cfg"},
        {"name": "T_SCRATCH", "value": "/scratch"},
    ]
    pod = _pod(
        "report",
        ["python", "-c", REPORT],
        hostname="two",
        subdomain="grp",
        container={
            "env": env,
            "volumeMounts": [
                {"name": "cfg", "mountPath": "/etc/cfg"},
                {"name": "scratch", "mountPath": "/scratch"},
                {"name": "tmp", "mountPath": "/tmp"},
            ],
        },
        volumes=[
            {"name": "cfg", "configMap": {"name": "cfg", "items": [{"key": "a.txt", "path": "a"}]}},
            {"name": "scratch", "emptyDir": {}},
            {"name": "tmp", "emptyDir": {}},
        ],
    )
    core.create_namespaced_pod(namespace, pod)
    wait_for(lambda: _status(core, namespace, "report").phase == "Failed", what="report Failed")
    status = _status(core, namespace, "report")
    terminated = status.container_statuses[0].state.terminated
    log = pods.log(namespace, "report")
    assert (terminated.exit_code, terminated.reason, terminated.message) == (3, "Error", "bye"), log
    seen = json.loads(log.strip().splitlines()[-1])
    ip, peer = status.pod_ip, pods.addresses.of(namespace, "grp", "one")
    assert ip.startswith("127.") and ip != "127.0.0.1" and ip != peer
    assert ip == pods.addresses.of(namespace, "grp", "two")  # its DNS identity's address
    assert seen["env"] | {"T_CONFIG": "", "T_SCRATCH": ""} == {
        "T_PLAIN": "plain",
        "T_SECRET": "s3cret",
        "T_CM": "from-cm",
        "T_NAME": "report",
        "T_LABEL": "report",
        "T_IP": ip,
        "T_PEER": f"tcp://{peer}:29500",  # a pod's DNS name resolves to its address
        "T_CONFIG": "",
        "T_SCRATCH": "",
    }
    assert seen["files"] == {"a": "alpha"}  # only the items asked for, at their paths
    assert not seen["env"]["T_CONFIG"].startswith("/etc")  # mount paths point at real dirs
    assert seen["tmp"] != "/tmp" and seen["cwd"] == str(pods.repo)


def test_a_pod_waits_for_a_missing_secret_then_runs(
    cluster: Cluster, namespace: str, pods: PodRunner
) -> None:
    core = k8s.CoreV1Api(cluster.api_client)
    env = [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "later", "key": "v"}}}]
    command = ["python", "-c", "import os; assert os.environ['T'] == 'here'"]
    core.create_namespaced_pod(namespace, _pod("held", command, container={"env": env}))

    def waiting() -> Any:
        statuses = _status(core, namespace, "held").container_statuses or []
        return statuses and statuses[0].state.waiting

    held = wait_for(waiting, what="the pod held for its Secret")
    assert held.reason == "CreateContainerConfigError"
    assert "secret 'later' not found" in held.message
    assert _status(core, namespace, "held").phase == "Pending"
    core.create_namespaced_secret(
        namespace, {"metadata": {"name": "later"}, "stringData": {"v": "here"}}
    )
    wait_for(lambda: _status(core, namespace, "held").phase == "Succeeded", what="held Succeeded")

    # What the runner does not emulate holds the pod, saying so: never a wrong run.
    from_all = {"envFrom": [{"secretRef": {"name": "later"}}]}
    core.create_namespaced_pod(namespace, _pod("unsupported", command, container=from_all))
    unsupported = wait_for(
        lambda: (_status(core, namespace, "unsupported").container_statuses or [None])[0],
        what="the unsupported pod's status",
    ).state.waiting
    assert (unsupported.reason, unsupported.message) == (
        "Unsupported",
        "envFrom is not emulated by the test kubelet",
    )
    assert pods.running(namespace) == []


def test_deleting_a_pod_terms_then_kills_its_process(
    cluster: Cluster, namespace: str, pods: PodRunner
) -> None:
    core = k8s.CoreV1Api(cluster.api_client)
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"
    core.create_namespaced_pod(
        namespace, _pod("polite", ["python", "-c", "import time; time.sleep(300)"])
    )
    core.create_namespaced_pod(
        namespace, _pod("stubborn", ["python", "-c", stubborn], terminationGracePeriodSeconds=1)
    )
    for name in ("polite", "stubborn"):
        wait_for(
            lambda n=name: _status(core, namespace, n).phase == "Running", what=f"{name} Running"
        )
    assert pods.running(namespace) == ["polite", "stubborn"]
    for name in ("polite", "stubborn"):
        core.delete_namespaced_pod(name, namespace)

    def gone(name: str) -> bool:
        try:
            core.read_namespaced_pod(name, namespace)
        except ApiException as exc:
            return exc.status == 404
        return False

    wait_for(lambda: gone("polite") and gone("stubborn"), what="both pods deleted")
    assert pods.running(namespace) == []  # reaped before the kubelet confirmed the deletion
