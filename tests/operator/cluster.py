"""A real Kubernetes control plane on loopback for the operator tests.

`ControlPlane` starts etcd, kube-apiserver (client certificates, RBAC on),
kube-controller-manager and kube-scheduler, built by `make cluster-bin` into a
cache outside the repo (tests/cluster/build.sh), on 127.0.0.1 with free ports
and a temporary directory. `TestKubelet` plays the kubelet of a few fake nodes
(CPU and GPU, `nvidia.com/gpu` capacity): it keeps their heartbeats fresh and
moves the pods the real scheduler binds to them through their phases.

    with ControlPlane() as cluster:        # a Cluster
        cluster.kubectl_run("get", "nodes")
        cluster.kubelet.finish_pod("ns", "pod", exit_code=1)

`Cluster` is what tests see; `Cluster.from_kubeconfig` wraps any cluster named
by KUBECONFIG the same way (no control plane, no test kubelet).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch as k8s_watch
from kubernetes.client.rest import ApiException

log = logging.getLogger("rlhfjob.tests.cluster")

REPO = Path(__file__).resolve().parents[2]
CLUSTER_MODULE = REPO / "tests" / "cluster"
CONTROL_PLANE_BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
TOOL_BINARIES = ("kubectl", "helm")
GPU = "nvidia.com/gpu"
SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"
KUBERNETES_SERVICE_IP = "10.96.0.1"
# Fake nodes report this address; pods "run" on loopback.
NODE_IP = "127.0.0.1"


class ControlPlaneError(RuntimeError):
    """A component did not start or did not become ready in time."""


# --------------------------------------------------------------------------
# Where the binaries are


def _versions() -> dict[str, str]:
    """KEY=value pairs of tests/cluster/versions.sh (shared with build.sh)."""
    out: dict[str, str] = {}
    for line in (CLUSTER_MODULE / "versions.sh").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def cache_root() -> Path:
    return Path(os.environ.get("RLHFJOB_CACHE") or Path.home() / ".cache" / "rlhfjob")


def cluster_bin_dir() -> Path:
    v = _versions()
    return cache_root() / f"cluster-k8s{v['K8S_VERSION']}-etcd{v['ETCD_VERSION']}" / "bin"


def tools_bin_dir() -> Path:
    v = _versions()
    return cache_root() / f"tools-kubectl-v35-{v['KUBECTL_WHEEL_VERSION']}" / "bin"


def missing_binaries() -> list[Path]:
    """The control-plane and tool binaries that `make cluster-bin` has not built yet."""
    wanted = [cluster_bin_dir() / b for b in CONTROL_PLANE_BINARIES]
    wanted += [tools_bin_dir() / b for b in TOOL_BINARIES]
    return [p for p in wanted if not os.access(p, os.X_OK)]


# --------------------------------------------------------------------------
# Certificates


@dataclass(frozen=True)
class _Pair:
    cert: Path
    key: Path


class _PKI:
    """A throwaway CA and the certificates the components and tests need."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self._ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rlhfjob-test-ca")])
        self._ca_cert = (
            self._builder(name, name, self._ca_key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self._ca_key.public_key()),
                critical=False,
            )
            .sign(self._ca_key, hashes.SHA256())
        )
        self.ca = self._write("ca", self._ca_cert, self._ca_key)

    @staticmethod
    def _builder(subject: x509.Name, issuer: x509.Name, public_key: Any) -> x509.CertificateBuilder:
        now = dt.datetime.now(dt.timezone.utc)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            # An hour back for clock skew; a week ahead outlasts any test session.
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=7))
        )

    def _write(self, stem: str, cert: x509.Certificate, key: Any) -> _Pair:
        pair = _Pair(self.dir / f"{stem}.crt", self.dir / f"{stem}.key")
        pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        pair.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        pair.key.chmod(0o600)
        return pair

    def issue(
        self,
        stem: str,
        common_name: str,
        *,
        groups: Sequence[str] = (),
        server_names: Sequence[str] = (),
    ) -> _Pair:
        """A leaf certificate: a client cert for CN/O (the API server reads them as
        user and groups), plus serverAuth for the DNS names and IPs given."""
        key = ec.generate_private_key(ec.SECP256R1())
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups]
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
        builder = (
            self._builder(x509.Name(attrs), self._ca_cert.subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._ca_key.public_key()),
                critical=False,
            )
        )
        if server_names:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
            sans: list[x509.GeneralName] = []
            for n in server_names:
                try:
                    sans.append(x509.IPAddress(ipaddress.ip_address(n)))
                except ValueError:
                    sans.append(x509.DNSName(n))
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        return self._write(stem, builder.sign(self._ca_key, hashes.SHA256()), key)

    def service_account_keys(self) -> _Pair:
        """RSA pair that signs (private) and verifies (public) service-account tokens."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pair = _Pair(self.dir / "sa.pub", self.dir / "sa.key")
        pair.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
        pair.key.chmod(0o600)
        pair.cert.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        return pair


def write_kubeconfig(
    path: Path,
    *,
    server: str,
    ca_cert: Path,
    client: _Pair | None = None,
    token: str | None = None,
    user: str = "admin",
) -> Path:
    """A kubeconfig for a cert or a bearer token. It names the certificate files (which
    live as long as the control plane) instead of inlining them: the Python client
    writes inlined ones to temp files that it removes only at exit, which a killed
    operator never reaches."""
    creds: dict[str, str] = {}
    if client is not None:
        creds = {"client-certificate": str(client.cert), "client-key": str(client.key)}
    elif token is not None:
        creds = {"token": token}
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "rlhfjob-test",
                "cluster": {"server": server, "certificate-authority": str(ca_cert)},
            }
        ],
        "users": [{"name": user, "user": creds}],
        "contexts": [{"name": user, "context": {"cluster": "rlhfjob-test", "user": user}}],
        "current-context": user,
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    path.chmod(0o600)
    return path


# --------------------------------------------------------------------------
# Processes


def _free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on loopback (held open together so none repeats)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _die_with_parent() -> None:
    # If pytest is SIGKILLed (CI timeout), the kernel kills the component too,
    # so nothing outlives the session. Runs in the child between fork and exec.
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except OSError:
        pass


class _Component:
    """One control-plane process in its own process group, logging to a file."""

    def __init__(self, name: str, argv: list[str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the process group, SIGKILL it after `grace` seconds; bounded."""
        if self.proc is None:
            return
        pgid = self.proc.pid  # start_new_session: the group id is the pid
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, sig)
            try:
                self.proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # The leader may be gone while a child of it lingers in the group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)


def wait_until(
    predicate: Callable[[], Any],
    *,
    timeout: float,
    what: str,
    interval: float = 0.2,
    fatal: tuple[type[BaseException], ...] = (),
) -> Any:
    """Poll `predicate` until it returns something truthy (returned) or raise
    TimeoutError naming `what` and the last exception the predicate raised.
    Exceptions of the `fatal` types end the wait at once."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = predicate()
            if result:
                return result
        except fatal:
            raise
        except Exception as e:  # retried until the deadline
            last_error = e
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)


# --------------------------------------------------------------------------
# Nodes and the test kubelet


@dataclass(frozen=True)
class NodeSpec:
    """A fake node: its capacity (= allocatable), labels and taints."""

    name: str
    cpu: str = "16"
    memory: str = "64Gi"
    pods: int = 110
    gpus: int = 0
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: Sequence[Mapping[str, str]] = ()

    def capacity(self) -> dict[str, str]:
        cap = {"cpu": self.cpu, "memory": self.memory, "pods": str(self.pods)}
        cap["ephemeral-storage"] = "500Gi"
        if self.gpus:
            cap[GPU] = str(self.gpus)
        return cap

    def all_labels(self) -> dict[str, str]:
        labels = {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "rlhf.dev/test-node": "true",
        }
        if self.gpus:
            # What NVIDIA's GPU feature discovery puts on a GPU node.
            labels |= {
                "nvidia.com/gpu.present": "true",
                "nvidia.com/gpu.count": str(self.gpus),
                "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
            }
        return labels | dict(self.labels)


DEFAULT_NODES: tuple[NodeSpec, ...] = (
    NodeSpec("cpu-0"),
    NodeSpec("cpu-1"),
    NodeSpec("gpu-0", cpu="64", memory="512Gi", gpus=8),
    NodeSpec("gpu-1", cpu="64", memory="512Gi", gpus=8),
)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _now_micro() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class PodHandler(Protocol):
    """What the test kubelet does with the pods bound to its nodes.

    Each method is called once per pod (by uid). `start` runs on the kubelet's
    watch thread and must return quickly (start a thread or process for long
    work); it reports through `kubelet.mark_running` / `kubelet.finish_pod` /
    `kubelet.mark_waiting`. `stop` goes to the handler that started the pod
    (even if `TestKubelet.using` has switched handlers since) on a thread of its
    own: it may block until the pod's containers are gone, as a kubelet does
    before it confirms a deletion, but must be bounded.
    """

    def start(self, kubelet: TestKubelet, pod: Any) -> None:
        """A pod was bound to one of the kubelet's nodes and is Pending."""

    def stop(self, kubelet: TestKubelet, pod: Any) -> None:
        """The pod is being deleted; the kubelet removes it once this returns."""


class MarkRunning:
    """Default: every container starts at once and keeps running until a test
    calls `kubelet.finish_pod` (or the pod is deleted)."""

    def start(self, kubelet: TestKubelet, pod: Any) -> None:
        kubelet.mark_running(pod.metadata.namespace, pod.metadata.name)

    def stop(self, kubelet: TestKubelet, pod: Any) -> None:
        pass


class Hold:
    """Leave bound pods Pending (as if images were still pulling); a test moves
    them on with `kubelet.mark_running` / `kubelet.finish_pod`."""

    def start(self, kubelet: TestKubelet, pod: Any) -> None:
        pass

    def stop(self, kubelet: TestKubelet, pod: Any) -> None:
        pass


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

    `finish_pod`, `mark_running` and `mark_waiting` may be called from any thread.
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

    def finish_pod(
        self,
        namespace: str,
        name: str,
        exit_code: int | Mapping[str, int] = 0,
        *,
        reason: str | None = None,
        message: str | None = None,
    ) -> str:
        """Every container exits with `exit_code` (or per container name, from a
        mapping; missing names exit 0). Returns the phase the pod ends in:
        Succeeded if all exited 0, else Failed; with restartPolicy OnFailure or
        Always the containers restart instead (restartCount + 1, phase Running)
        just as a real kubelet does."""
        pod = self.core.read_namespaced_pod(name, namespace)
        with self._lock:
            self._started.setdefault(pod.metadata.uid, None)
        codes = {
            c.name: (exit_code.get(c.name, 0) if isinstance(exit_code, Mapping) else exit_code)
            for c in pod.spec.containers
        }
        failed = any(codes.values())
        policy = pod.spec.restart_policy or "Always"
        restarts = policy == "Always" or (policy == "OnFailure" and failed)
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
        version = f"v{_versions()['K8S_VERSION']}"
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
        if pod.spec.node_name not in self.node_names:
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

    def _error(self, msg: str) -> None:
        log.warning("test kubelet: %s", msg)
        self.errors.append(msg)


# --------------------------------------------------------------------------
# What tests see


@dataclass
class Cluster:
    """A cluster to test against: ours (`control_plane` set) or KUBECONFIG's."""

    kubeconfig: Path
    server: str
    api_client: k8s.ApiClient
    kubectl: Path
    helm: Path
    kubelet: TestKubelet | None
    control_plane: ControlPlane | None
    # HOME-like dirs for kubectl's discovery cache and helm's config/cache.
    tool_home: Path

    @classmethod
    def from_kubeconfig(cls, kubeconfig: Path, tool_home: Path) -> Cluster:
        api = k8s_config.new_client_from_config(config_file=str(kubeconfig))
        return cls(
            kubeconfig=kubeconfig,
            server=api.configuration.host,
            api_client=api,
            kubectl=_tool("kubectl"),
            helm=_tool("helm"),
            kubelet=None,
            control_plane=None,
            tool_home=tool_home,
        )

    def new_api_client(self) -> k8s.ApiClient:
        """Another admin client (e.g. for a thread of its own)."""
        return k8s_config.new_client_from_config(config_file=str(self.kubeconfig))

    def env(self) -> dict[str, str]:
        """os.environ for subprocesses (kubectl, helm, an operator): KUBECONFIG
        set, and tool caches kept out of $HOME."""
        h = self.tool_home
        return os.environ | {
            "KUBECONFIG": str(self.kubeconfig),
            "KUBECACHEDIR": str(h / "kube-cache"),
            "HELM_CACHE_HOME": str(h / "helm-cache"),
            "HELM_CONFIG_HOME": str(h / "helm-config"),
            "HELM_DATA_HOME": str(h / "helm-data"),
        }

    def kubectl_run(
        self, *args: str, input: str | None = None, timeout: float = 60, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run the real kubectl; raises CalledProcessError (with stderr) if check."""
        return self._run(self.kubectl, args, input=input, timeout=timeout, check=check)

    def helm_run(
        self, *args: str, input: str | None = None, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self._run(self.helm, args, input=input, timeout=timeout, check=check)

    def _run(
        self, exe: Path, args: Sequence[str], *, input: str | None, timeout: float, check: bool
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(exe), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(),
            check=False,
        )
        if check and proc.returncode != 0:
            raise subprocess.CalledProcessError(
                proc.returncode, proc.args, output=proc.stdout, stderr=proc.stderr
            )
        return proc

    def create_namespace(self, prefix: str = "t-", *, timeout: float = 30) -> str:
        """A new namespace (generated name) whose `default` ServiceAccount exists,
        so pods can be created in it at once."""
        core = k8s.CoreV1Api(self.api_client)
        ns = core.create_namespace({"metadata": {"generateName": prefix}})
        name: str = ns.metadata.name
        wait_until(
            lambda: core.read_namespaced_service_account("default", name),
            timeout=timeout,
            what=f"ServiceAccount {name}/default (controller-manager)",
        )
        return name

    def delete_namespace(self, name: str) -> None:
        """Start deleting a namespace; does not wait for it to be gone."""
        with contextlib.suppress(ApiException):
            k8s.CoreV1Api(self.api_client).delete_namespace(name)

    @contextlib.contextmanager
    def namespace(self, prefix: str = "t-") -> Iterator[str]:
        """A new namespace (see create_namespace), deleted on the way out."""
        name = self.create_namespace(prefix)
        try:
            yield name
        finally:
            self.delete_namespace(name)


def _tool(name: str) -> Path:
    p = tools_bin_dir() / name
    if os.access(p, os.X_OK):
        return p
    found = shutil.which(name)
    return Path(found) if found else p


# --------------------------------------------------------------------------
# The control plane


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler on
    127.0.0.1, plus the test kubelet. `start()` returns a `Cluster`; `stop()`
    kills everything and removes the temp dir (both bounded)."""

    def __init__(
        self,
        *,
        nodes: Sequence[NodeSpec] = DEFAULT_NODES,
        bin_dir: Path | None = None,
        start_timeout: float = 180.0,
        keep_logs_in: Path | None = None,
    ) -> None:
        self.nodes = tuple(nodes)
        self.bin_dir = bin_dir or cluster_bin_dir()
        self.start_timeout = start_timeout
        self.keep_logs_in = keep_logs_in
        self.dir: Path | None = None
        self.components: dict[str, _Component] = {}
        self.kubelet: TestKubelet | None = None
        self.cluster: Cluster | None = None
        self.pki: _PKI | None = None
        self.server = ""
        self.startup_seconds: float | None = None

    # -- public ------------------------------------------------------------

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Cluster:
        missing = [
            self.bin_dir / b
            for b in CONTROL_PLANE_BINARIES
            if not os.access(self.bin_dir / b, os.X_OK)
        ]
        if missing:
            raise ControlPlaneError(f"missing {', '.join(map(str, missing))}: run make cluster-bin")
        began = time.monotonic()
        _sweep_orphaned_dirs()
        self.dir = Path(tempfile.mkdtemp(prefix=_DIR_PREFIX))
        (self.dir / "owner.pid").write_text(str(os.getpid()))
        try:
            self._start(began)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        assert self.cluster is not None
        return self.cluster

    def stop(self) -> None:
        """Idempotent and bounded (~10 s per component at worst)."""
        if self.kubelet is not None:
            self.kubelet.stop()
            self.kubelet = None
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                self.cluster.api_client.close()
        for name in ("kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"):
            comp = self.components.get(name)
            if comp is not None:
                comp.stop()
        if self.dir is not None:
            if self.keep_logs_in is not None:
                self.keep_logs_in.mkdir(parents=True, exist_ok=True)
                for comp in self.components.values():
                    with contextlib.suppress(OSError):
                        shutil.copy(comp.log_path, self.keep_logs_in / comp.log_path.name)
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
        self.components.clear()

    def client_for(self, user: str, groups: Sequence[str] = ()) -> k8s.ApiClient:
        """An ApiClient authenticated as `user` in `groups` (a fresh client cert):
        for testing what RBAC allows someone who is not an admin."""
        return k8s_config.new_client_from_config(config_file=str(self.kubeconfig_for(user, groups)))

    def kubeconfig_for(self, user: str, groups: Sequence[str] = ()) -> Path:
        assert self.pki is not None and self.dir is not None, "not started"
        stem = "user-" + "".join(c if c.isalnum() else "-" for c in user)
        pair = self.pki.issue(stem, user, groups=groups)
        return write_kubeconfig(
            self.dir / f"{stem}.kubeconfig",
            server=self.server,
            ca_cert=self.pki.ca.cert,
            client=pair,
            user=user,
        )

    def kubeconfig_for_service_account(
        self, namespace: str, name: str, *, seconds: int = 3600
    ) -> Path:
        """A kubeconfig with a bound token of ServiceAccount namespace/name
        (TokenRequest), e.g. to run the operator with the chart's own account."""
        assert self.cluster is not None and self.pki is not None and self.dir is not None
        core = k8s.CoreV1Api(self.cluster.api_client)
        tr = core.create_namespaced_service_account_token(
            name, namespace, {"spec": {"expirationSeconds": seconds}}
        )
        return write_kubeconfig(
            self.dir / f"sa-{namespace}-{name}.kubeconfig",
            server=self.server,
            ca_cert=self.pki.ca.cert,
            token=tr.status.token,
            user=f"system:serviceaccount:{namespace}:{name}",
        )

    def log_tail(self, component: str, lines: int = 40) -> str:
        return self.components[component].tail(lines)

    # -- startup -----------------------------------------------------------

    def _deadline_left(self, began: float) -> float:
        return max(1.0, self.start_timeout - (time.monotonic() - began))

    def _wait(self, component: str, ok: Callable[[], Any], what: str, began: float) -> None:
        comp = self.components[component]

        def check() -> Any:
            code = comp.exit_code()
            if code is not None:
                raise ControlPlaneError(
                    f"{component} exited with code {code} while waiting for {what}; "
                    f"last lines of {comp.log_path.name}:\n{comp.tail()}"
                )
            return ok()

        try:
            wait_until(
                check,
                timeout=self._deadline_left(began),
                what=what,
                interval=0.25,
                fatal=(ControlPlaneError,),
            )
        except TimeoutError as e:
            raise ControlPlaneError(
                f"{component}: {e}; last lines of {comp.log_path.name}:\n{comp.tail()}"
            ) from None

    def _start(self, began: float) -> None:
        assert self.dir is not None
        d = self.dir
        (
            etcd_port,
            etcd_peer,
            api_port,
            kcm_port,
            sched_port,
        ) = _free_ports(5)
        self.server = f"https://127.0.0.1:{api_port}"
        pki = self.pki = _PKI(d / "pki")
        serving = pki.issue(
            "apiserver",
            "kube-apiserver",
            server_names=[
                "127.0.0.1",
                "localhost",
                KUBERNETES_SERVICE_IP,
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
        )
        sa = pki.service_account_keys()
        admin = pki.issue("admin", "admin", groups=["system:masters"])
        kcm = pki.issue("controller-manager", "system:kube-controller-manager")
        sched = pki.issue("scheduler", "system:kube-scheduler")
        # The aggregation layer's client; also what the components' delegated
        # authentication expects to find published in kube-system.
        front_proxy = pki.issue("front-proxy-client", "front-proxy-client")
        admin_kc = write_kubeconfig(
            d / "admin.kubeconfig", server=self.server, ca_cert=pki.ca.cert, client=admin
        )
        kcm_kc = write_kubeconfig(
            d / "controller-manager.kubeconfig",
            server=self.server,
            ca_cert=pki.ca.cert,
            client=kcm,
            user="system:kube-controller-manager",
        )
        sched_kc = write_kubeconfig(
            d / "scheduler.kubeconfig",
            server=self.server,
            ca_cert=pki.ca.cert,
            client=sched,
            user="system:kube-scheduler",
        )
        b = self.bin_dir

        # etcd: one member, no fsync (a test cluster's data is thrown away).
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        peer_url = f"http://127.0.0.1:{etcd_peer}"
        self._launch(
            "etcd",
            [
                str(b / "etcd"),
                "--name=default",
                f"--data-dir={d / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=default={peer_url}",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
        )
        self._wait("etcd", lambda: _http_ok(f"{etcd_url}/health"), "etcd /health", began)

        self._launch(
            "kube-apiserver",
            [
                str(b / "kube-apiserver"),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={api_port}",
                f"--cert-dir={d / 'apiserver-certs'}",
                f"--tls-cert-file={serving.cert}",
                f"--tls-private-key-file={serving.key}",
                f"--client-ca-file={pki.ca.cert}",
                "--authorization-mode=Node,RBAC",
                f"--service-account-key-file={sa.cert}",
                f"--service-account-signing-key-file={sa.key}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                "--allow-privileged=true",
                f"--requestheader-client-ca-file={pki.ca.cert}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={front_proxy.cert}",
                f"--proxy-client-key-file={front_proxy.key}",
                # 127.0.0.1 is not a valid Endpoints address: don't publish one.
                "--endpoint-reconciler-type=none",
                "--profiling=false",
                "--v=0",
            ],
        )
        ctx = ssl.create_default_context(cafile=str(pki.ca.cert))
        ctx.load_cert_chain(str(admin.cert), str(admin.key))
        self._wait(
            "kube-apiserver",
            lambda: _http_ok(f"{self.server}/readyz", ctx),
            "kube-apiserver /readyz",
            began,
        )

        common = [
            "--bind-address=127.0.0.1",
            "--leader-elect=false",
            f"--cert-dir={d / 'component-certs'}",
        ]
        self._launch(
            "kube-controller-manager",
            [
                str(b / "kube-controller-manager"),
                f"--kubeconfig={kcm_kc}",
                f"--authentication-kubeconfig={kcm_kc}",
                f"--authorization-kubeconfig={kcm_kc}",
                f"--secure-port={kcm_port}",
                # Every controller runs as its own ServiceAccount, as kubeadm does:
                # the bootstrap RBAC roles are what the tests exercise.
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={sa.key}",
                f"--root-ca-file={pki.ca.cert}",
                f"--cluster-signing-cert-file={pki.ca.cert}",
                f"--cluster-signing-key-file={pki.ca.key}",
                "--controllers=*",
                # Resync fast so that GC and namespace deletion don't stall tests.
                "--node-monitor-period=2s",
                *common,
            ],
        )
        self._launch(
            "kube-scheduler",
            [
                str(b / "kube-scheduler"),
                f"--kubeconfig={sched_kc}",
                f"--authentication-kubeconfig={sched_kc}",
                f"--authorization-kubeconfig={sched_kc}",
                f"--secure-port={sched_port}",
                *common,
            ],
        )

        api = k8s_config.new_client_from_config(config_file=str(admin_kc))
        self.kubelet = TestKubelet(
            k8s_config.new_client_from_config(config_file=str(admin_kc)), nodes=self.nodes
        )
        self.kubelet.start()
        tools_home = d / "tools"
        self.cluster = Cluster(
            kubeconfig=admin_kc,
            server=self.server,
            api_client=api,
            kubectl=_tool("kubectl"),
            helm=_tool("helm"),
            kubelet=self.kubelet,
            control_plane=self,
            tool_home=tools_home,
        )

        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        # Their serving certs are self-signed at startup; this is only a probe.
        insecure.verify_mode = ssl.CERT_NONE
        for name, port in (("kube-controller-manager", kcm_port), ("kube-scheduler", sched_port)):
            url = f"https://127.0.0.1:{port}/healthz"
            self._wait(name, lambda u=url: _http_ok(u, insecure), f"{name} /healthz", began)
        core = k8s.CoreV1Api(api)
        self._wait(
            "kube-controller-manager",
            lambda: core.read_namespaced_service_account("default", "default"),
            "ServiceAccount default/default (serviceaccount controller)",
            began,
        )
        self._wait(
            "kube-controller-manager",
            lambda: self._nodes_schedulable(core),
            "nodes Ready without the not-ready taint (node lifecycle controller)",
            began,
        )

    def _launch(self, name: str, argv: list[str]) -> None:
        assert self.dir is not None
        comp = _Component(name, argv, self.dir / f"{name}.log")
        self.components[name] = comp
        comp.start()

    def _nodes_schedulable(self, core: k8s.CoreV1Api) -> bool:
        by_name = {n.metadata.name: n for n in core.list_node().items}
        for spec in self.nodes:
            node = by_name.get(spec.name)
            if node is None:
                return False
            taints = {t.key for t in node.spec.taints or []}
            if taints & {"node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"}:
                return False
        return True


class Missing(Exception):
    """What a session needs is not built or installed; the message says what to run."""


_shared_lock = threading.Lock()
_shared: dict[str, Any] = {"cluster": None, "users": 0, "close": None}


@contextlib.contextmanager
def session_cluster() -> Iterator[Cluster]:
    """The cluster of this test session, shared by every test directory that asks
    (tests/operator, tests/e2e): the one KUBECONFIG names, else our control plane on
    loopback, started by the first caller and stopped when the last is done.

    Raises Missing when binaries are missing (run make cluster-bin).
    RLHFJOB_CLUSTER_LOGS=<dir> keeps the components' logs there.
    """
    with _shared_lock:
        if _shared["cluster"] is None:
            _shared["cluster"], _shared["close"] = _open_session_cluster()
        _shared["users"] += 1
        cluster = _shared["cluster"]
    try:
        yield cluster
    finally:
        with _shared_lock:
            _shared["users"] -= 1
            if _shared["users"] == 0:
                close, _shared["cluster"], _shared["close"] = _shared["close"], None, None
                close()


def _open_session_cluster() -> tuple[Cluster, Callable[[], None]]:
    external = os.environ.get("KUBECONFIG")
    if external:
        tools = [p for p in missing_binaries() if p.parent == tools_bin_dir()]
        if tools and not all(shutil.which(p.name) for p in tools):
            raise Missing(f"missing {', '.join(map(str, tools))}: run make cluster-bin")
        home = Path(tempfile.mkdtemp(prefix="rlhfjob-tools-"))
        try:
            cluster = Cluster.from_kubeconfig(Path(external), home)
        except BaseException:
            shutil.rmtree(home, ignore_errors=True)
            raise

        def close_external() -> None:
            try:
                cluster.api_client.close()
            finally:
                shutil.rmtree(home, ignore_errors=True)

        return cluster, close_external
    missing = missing_binaries()
    if missing:
        raise Missing(f"missing {', '.join(map(str, missing))}: run make cluster-bin")
    logs = os.environ.get("RLHFJOB_CLUSTER_LOGS")  # keep component logs for debugging
    cp = ControlPlane(keep_logs_in=Path(logs) if logs else None)
    return cp.start(), cp.stop


_DIR_PREFIX = "rlhfjob-cp-"


def _sweep_orphaned_dirs() -> None:
    """Remove temp dirs left by a test process that was SIGKILLed (its
    components died with it, see _die_with_parent; the dir could not)."""
    for d in Path(tempfile.gettempdir()).glob(f"{_DIR_PREFIX}*"):
        try:
            pid = int((d / "owner.pid").read_text())
        except (OSError, ValueError):
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except PermissionError:
            pass  # alive, another user's


def _http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False
