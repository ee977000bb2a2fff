"""`TestKubelet`: heartbeats for the fake nodes, pods moved through their phases."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from kubernetes import client as k8s
from kubernetes import watch as k8s_watch
from kubernetes.client.rest import ApiException

from .nodes import DEFAULT_NODES, MarkRunning, NodeSpec, PodHandler
from .paths import NODE_IP, versions

log = logging.getLogger("rlhfjob.tests.cluster")


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _now_micro() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class TestKubelet:
    """The kubelet of the fake nodes, as two threads against the API server.

    - heartbeat: creates the nodes (Ready, capacity incl. `nvidia.com/gpu`) and
      renews their Leases and Ready condition, so the node lifecycle
      controller keeps them schedulable;
    - pods: watches pods bound to its nodes and hands each new one to
      `handler` (default `MarkRunning`); finishes the deletion of pods that
      are being deleted (what a real kubelet confirms with a grace-0 delete,
      after the handler stopped them), so ownerReference cascades and
      namespace deletion complete.

    `finish_pod`, `mark_running` and `mark_waiting` may be called from any thread;
    `lose_node`, `mark_node_unknown` and `recover_node` take a node away and back.
    """

    __test__ = False  # not a pytest test class despite the name

    LEASE_SECONDS = 40
    HEARTBEAT_SECONDS = 5.0

    def __init__(
        self,
        api_client: k8s.ApiClient,
        nodes: Sequence[NodeSpec] = DEFAULT_NODES,
        handler: PodHandler | None = None,
    ) -> None:
        self._api_client = api_client
        self.core = k8s.CoreV1Api(api_client)
        self.coordination = k8s.CoordinationV1Api(api_client)
        self.nodes = tuple(nodes)
        self.node_names = frozenset(n.name for n in self.nodes)
        self.handler: PodHandler = handler or MarkRunning()
        self.errors: list[str] = []  # handler and API errors, for tests to assert on
        # pod uid -> the handler that started it (None: moved on by a test directly)
        self._started: dict[str, PodHandler | None] = {}
        self._finalized: set[str] = set()  # pod uids whose deletion we confirmed
        self._lost: set[str] = set()  # nodes whose kubelet went silent (lose_node)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._stoppers: list[threading.Thread] = []  # one per pod being deleted

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        for spec in self.nodes:
            self._register(spec)
        for target, name in ((self._heartbeat_loop, "heartbeat"), (self._pod_loop, "pods")):
            t = threading.Thread(target=target, name=f"test-kubelet-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        deadline = time.monotonic() + timeout
        with self._lock:
            stoppers, self._stoppers = self._stoppers, []
        for t in [*self._threads, *stoppers]:
            t.join(timeout=max(0.1, deadline - time.monotonic()))
        self._threads.clear()

    @contextlib.contextmanager
    def using(self, handler: PodHandler) -> Iterator[PodHandler]:
        """Use `handler` for pods that start inside the block (the session's
        kubelet is shared, so tests restore the previous one)."""
        previous, self.handler = self.handler, handler
        try:
            yield handler
        finally:
            self.handler = previous

    # -- what tests call ---------------------------------------------------

    def mark_running(self, namespace: str, name: str, *, pod_ip: str = NODE_IP) -> None:
        """All containers started and ready; phase Running at `pod_ip` (the node's
        address by default) on the node 127.0.0.1."""
        pod = self.core.read_namespaced_pod(name, namespace)
        with self._lock:
            self._started.setdefault(pod.metadata.uid, None)
        now = _now()
        statuses = [
            self._container_status(pod, c, running={"startedAt": now}) for c in pod.spec.containers
        ]
        init = [
            self._container_status(
                pod, c, terminated={"exitCode": 0, "reason": "Completed", "finishedAt": now}
            )
            for c in pod.spec.init_containers or []
        ]
        status: dict[str, Any] = {
            "phase": "Running",
            "hostIP": NODE_IP,
            "hostIPs": [{"ip": NODE_IP}],
            "podIP": pod_ip,
            "podIPs": [{"ip": pod_ip}],
            "startTime": now,
            "conditions": self._conditions(ready=True),
            "containerStatuses": statuses,
        }
        if init:
            status["initContainerStatuses"] = init
        self._patch_status(pod, status)

    def mark_waiting(self, namespace: str, name: str, *, reason: str, message: str) -> None:
        """Every container is waiting (e.g. CreateContainerConfigError: a Secret it
        needs is missing); the pod stays Pending, as a kubelet retrying it."""
        pod = self.core.read_namespaced_pod(name, namespace)
        statuses = [
            self._container_status(pod, c, waiting={"reason": reason, "message": message})
            for c in pod.spec.containers
        ]
        self._patch_status(
            pod,
            {
                "phase": "Pending",
                "conditions": self._conditions(ready=False),
                "containerStatuses": statuses,
            },
        )

    def lose_node(self, name: str) -> None:
        """Node ``name``'s kubelet goes silent, as on a crash or a partition: no more
        heartbeats, nothing done for its pods, their deletions never confirmed (they stay
        Terminating). The API server still shows the node Ready until
        :meth:`mark_node_unknown`. Give it back with :meth:`recover_node`."""
        assert name in self.node_names, name
        with self._lock:
            self._lost.add(name)

    def mark_node_unknown(self, name: str) -> None:
        """What the node lifecycle controller writes once a node's heartbeats are older
        than its grace period (40 s or more on a real cluster): Ready Unknown."""
        now = _now()
        ready = {
            "type": "Ready",
            "status": "Unknown",
            "reason": "NodeStatusUnknown",
            "message": "Kubelet stopped posting node status.",
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
        }
        self.core.patch_node_status(name, {"status": {"conditions": [ready]}})

    def recover_node(self, name: str) -> None:
        """The node's kubelet is back: Ready again at once, and its pods dealt with
        (deletions confirmed, new pods started)."""
        spec = next(n for n in self.nodes if n.name == name)
        with self._lock:
            self._lost.discard(name)
        self._renew(spec, status=True)
        for pod in self.core.list_pod_for_all_namespaces(
            field_selector=f"spec.nodeName={name}"
        ).items:
            self._sync(pod)

    def finish_pod(
        self,
        namespace: str,
        name: str,
        exit_code: int | Mapping[str, int] = 0,
        *,
        reason: str | None = None,
        message: str | None = None,
        deleted: bool = False,
    ) -> str:
        """Every container exits with `exit_code` (or per container name, from a
        mapping; missing names exit 0). Returns the phase the pod ends in:
        Succeeded if all exited 0, else Failed; with restartPolicy OnFailure or
        Always the containers restart instead (restartCount + 1, phase Running)
        just as a real kubelet does, unless the pod is being `deleted`."""
        pod = self.core.read_namespaced_pod(name, namespace)
        with self._lock:
            self._started.setdefault(pod.metadata.uid, None)
        codes = {
            c.name: (exit_code.get(c.name, 0) if isinstance(exit_code, Mapping) else exit_code)
            for c in pod.spec.containers
        }
        failed = any(codes.values())
        policy = pod.spec.restart_policy or "Always"
        restarts = not deleted and (policy == "Always" or (policy == "OnFailure" and failed))
        now = _now()
        previous = {s.name: s for s in (pod.status.container_statuses or [])}
        statuses = []
        for c in pod.spec.containers:
            code = codes[c.name]
            terminated = {
                "exitCode": code,
                "reason": reason or ("Completed" if code == 0 else "Error"),
                "startedAt": now,
                "finishedAt": now,
            }
            if message:
                terminated["message"] = message
            count = previous[c.name].restart_count if c.name in previous else 0
            if restarts:
                s = self._container_status(
                    pod, c, running={"startedAt": now}, restart_count=count + 1
                )
                s["lastState"] = {"terminated": terminated}
            else:
                s = self._container_status(pod, c, terminated=terminated, restart_count=count)
            statuses.append(s)
        phase = "Running" if restarts else ("Failed" if failed else "Succeeded")
        status: dict[str, Any] = {
            "phase": phase,
            "conditions": self._conditions(ready=restarts),
            "containerStatuses": statuses,
        }
        if not pod.status.pod_ip:
            status |= {"hostIP": NODE_IP, "podIP": NODE_IP, "podIPs": [{"ip": NODE_IP}]}
            status |= {"hostIPs": [{"ip": NODE_IP}], "startTime": now}
        if phase == "Failed" and reason:
            status["reason"] = reason
        if message and not restarts:
            status["message"] = message
        self._patch_status(pod, status)
        return phase

    # -- internals ---------------------------------------------------------

    @staticmethod
    def _conditions(*, ready: bool) -> list[dict[str, str]]:
        now = _now()
        ready_s = "True" if ready else "False"
        return [
            {"type": "PodReadyToStartContainers", "status": ready_s, "lastTransitionTime": now},
            {"type": "Initialized", "status": "True", "lastTransitionTime": now},
            {"type": "ContainersReady", "status": ready_s, "lastTransitionTime": now},
            {"type": "Ready", "status": ready_s, "lastTransitionTime": now},
        ]

    @staticmethod
    def _container_status(
        pod: Any,
        container: Any,
        *,
        running: dict[str, Any] | None = None,
        terminated: dict[str, Any] | None = None,
        waiting: dict[str, Any] | None = None,
        restart_count: int = 0,
    ) -> dict[str, Any]:
        return {
            "name": container.name,
            "image": container.image,
            "imageID": f"rlhfjob-test://{container.image}",
            "containerID": f"rlhfjob-test://{pod.metadata.uid}/{container.name}",
            "ready": running is not None,
            "started": running is not None,
            "restartCount": restart_count,
            # Nulls delete the other states in the strategic merge patch: a
            # container is in exactly one state.
            "state": {"waiting": waiting, "running": running, "terminated": terminated},
        }

    def _patch_status(self, pod: Any, status: dict[str, Any]) -> None:
        self.core.patch_namespaced_pod_status(
            pod.metadata.name,
            pod.metadata.namespace,
            {"metadata": {"uid": pod.metadata.uid}, "status": status},
            _content_type="application/strategic-merge-patch+json",
        )

    def _node_status(self, spec: NodeSpec) -> dict[str, Any]:
        now = _now()
        cond = [
            ("MemoryPressure", "False", "KubeletHasSufficientMemory"),
            ("DiskPressure", "False", "KubeletHasNoDiskPressure"),
            ("PIDPressure", "False", "KubeletHasSufficientPID"),
            ("Ready", "True", "KubeletReady"),
        ]
        version = f"v{versions()['K8S_VERSION']}"
        return {
            "capacity": spec.capacity(),
            "allocatable": spec.capacity(),
            "conditions": [
                {
                    "type": t,
                    "status": s,
                    "reason": r,
                    "message": "rlhfjob test kubelet",
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": now,
                }
                for t, s, r in cond
            ],
            "addresses": [
                {"type": "InternalIP", "address": NODE_IP},
                {"type": "Hostname", "address": spec.name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": spec.name,
                "systemUUID": spec.name,
                "bootID": spec.name,
                "kernelVersion": "test",
                "osImage": "rlhfjob test kubelet",
                "containerRuntimeVersion": "rlhfjob-test://0",
                "kubeletVersion": version,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }

    def _register(self, spec: NodeSpec) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": spec.name, "labels": spec.all_labels()},
            "spec": {"taints": [dict(t) for t in spec.taints]} if spec.taints else {},
            "status": self._node_status(spec),
        }
        try:
            self.core.create_node(body)
        except ApiException as e:
            if e.status != 409:
                raise
        # Create may keep or drop status depending on the version: set it anyway.
        self.core.patch_node_status(spec.name, {"status": self._node_status(spec)})

    def _renew(self, spec: NodeSpec, *, status: bool) -> None:
        body = {
            "metadata": {"name": spec.name, "namespace": "kube-node-lease"},
            "spec": {
                "holderIdentity": spec.name,
                "leaseDurationSeconds": self.LEASE_SECONDS,
                "renewTime": _now_micro(),
            },
        }
        try:
            self.coordination.patch_namespaced_lease(
                spec.name,
                "kube-node-lease",
                body,
                _content_type="application/merge-patch+json",
            )
        except ApiException as e:
            if e.status != 404:
                raise
            node = self.core.read_node(spec.name)
            body["metadata"]["ownerReferences"] = [
                {"apiVersion": "v1", "kind": "Node", "name": spec.name, "uid": node.metadata.uid}
            ]
            self.coordination.create_namespaced_lease("kube-node-lease", body)
        if status:
            conds = self._node_status(spec)["conditions"]
            self.core.patch_node_status(spec.name, {"status": {"conditions": conds}})

    def _heartbeat_loop(self) -> None:
        beats = 0
        while not self._stop.is_set():
            for spec in self.nodes:
                if spec.name in self._lost:
                    continue
                try:
                    # The Ready condition every 6th beat (30 s), the Lease every beat.
                    self._renew(spec, status=beats % 6 == 0)
                except Exception as e:
                    if not self._stop.is_set():
                        self._error(f"heartbeat {spec.name}: {e!r}")
            beats += 1
            self._stop.wait(self.HEARTBEAT_SECONDS)

    def _pod_loop(self) -> None:
        while not self._stop.is_set():
            try:
                pods = self.core.list_pod_for_all_namespaces()
                for pod in pods.items:
                    self._sync(pod)
                self._watch(pods.metadata.resource_version)
            except Exception as e:
                if not self._stop.is_set():
                    self._error(f"pod watch: {e!r}")
                    self._stop.wait(0.5)

    def _watch(self, resource_version: str) -> None:
        # Short server-side timeouts so that stop() is prompt; events between
        # two watch calls are not lost since each resumes at the last version.
        w = k8s_watch.Watch()
        while not self._stop.is_set():
            for event in w.stream(
                self.core.list_pod_for_all_namespaces,
                resource_version=resource_version,
                timeout_seconds=2,
            ):
                if self._stop.is_set():
                    w.stop()
                    return
                if event["type"] == "ERROR":
                    return  # expired version (410): relist
                pod = event["object"]
                resource_version = pod.metadata.resource_version
                if event["type"] == "DELETED":
                    self._forget(pod)
                else:
                    self._sync(pod)
            resource_version = w.resource_version or resource_version

    def _sync(self, pod: Any) -> None:
        if pod.spec.node_name not in self.node_names or pod.spec.node_name in self._lost:
            return
        uid = pod.metadata.uid
        if pod.metadata.deletion_timestamp is not None:
            with self._lock:
                if uid in self._finalized:
                    return
                self._finalized.add(uid)
                handler = self._started.get(uid)
            self._in_thread(pod, lambda: self._confirm_deletion(pod, handler))
            return
        with self._lock:
            if uid in self._started:
                return
            handler = self._started[uid] = self.handler
        if pod.status.phase != "Pending":
            with self._lock:
                self._started[uid] = None
            return  # already moved on (by finish_pod, or before a restart)
        try:
            handler.start(self, pod)
        except Exception as e:
            self._error(f"handler.start {pod.metadata.namespace}/{pod.metadata.name}: {e!r}")

    def _forget(self, pod: Any) -> None:
        uid = pod.metadata.uid
        with self._lock:
            handler = self._started.pop(uid, None)
            finalized = uid in self._finalized
            self._finalized.discard(uid)
        if handler is not None and not finalized and pod.spec.node_name in self.node_names:
            # Deleted with grace 0 by someone else: the handler still stops it.
            self._in_thread(pod, lambda: self._stop_with(handler, pod))

    def _in_thread(self, pod: Any, work: Callable[[], None]) -> None:
        """Stopping may take a pod's grace period: off the watch thread, one per pod."""
        t = threading.Thread(
            target=work, name=f"test-kubelet-stop-{pod.metadata.name}", daemon=True
        )
        with self._lock:
            self._stoppers = [s for s in self._stoppers if s.is_alive()] + [t]
        t.start()

    def _stop_with(self, handler: PodHandler, pod: Any) -> None:
        try:
            handler.stop(self, pod)
        except Exception as e:
            self._error(f"handler.stop {pod.metadata.namespace}/{pod.metadata.name}: {e!r}")

    def _confirm_deletion(self, pod: Any, handler: PodHandler | None) -> None:
        ref = f"{pod.metadata.namespace}/{pod.metadata.name}"
        if handler is not None:
            self._stop_with(handler, pod)
        try:
            self.core.delete_namespaced_pod(
                pod.metadata.name,
                pod.metadata.namespace,
                body={"gracePeriodSeconds": 0, "preconditions": {"uid": pod.metadata.uid}},
            )
        except ApiException as e:
            if e.status not in (404, 409):
                self._error(f"delete {ref}: {e!r}")
        self._end_held(pod)

    def _end_held(self, pod: Any) -> None:
        """A pod that a finalizer keeps after the confirmation (Kueue's
        `kueue.x-k8s.io/managed`) gets the terminal phase a real kubelet reports for a
        deleted pod: containers that had not ended exit 137, the pod Failed (Succeeded
        if every container exited 0). A pod already gone, or terminal, is left as is."""
        ref = f"{pod.metadata.namespace}/{pod.metadata.name}"
        try:
            now = self.core.read_namespaced_pod(pod.metadata.name, pod.metadata.namespace)
        except ApiException:
            return
        if now.metadata.uid != pod.metadata.uid or now.status.phase in ("Succeeded", "Failed"):
            return
        ended = {
            s.name: s.state.terminated.exit_code
            for s in now.status.container_statuses or []
            if s.state is not None and s.state.terminated is not None
        }
        codes = {c.name: ended.get(c.name, 137) for c in now.spec.containers}
        try:
            self.finish_pod(pod.metadata.namespace, pod.metadata.name, codes, deleted=True)
        except ApiException as e:
            if e.status not in (404, 409):
                self._error(f"terminal status {ref}: {e!r}")

    def _error(self, msg: str) -> None:
        log.warning("test kubelet: %s", msg)
        self.errors.append(msg)
