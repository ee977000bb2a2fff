"""`ControlPlane`: etcd, kube-apiserver, controller-manager and scheduler on loopback."""

from __future__ import annotations

import contextlib
import os
import shutil
import ssl
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config

from .handle import Cluster
from .kubelet import TestKubelet
from .nodes import DEFAULT_NODES, NodeSpec
from .paths import (
    CONTROL_PLANE_BINARIES,
    KUBERNETES_SERVICE_IP,
    SERVICE_CLUSTER_IP_RANGE,
    cluster_bin_dir,
    tool,
)
from .pki import PKI, write_kubeconfig
from .processes import Component, free_ports, http_ok, wait_while_running


class ControlPlaneError(RuntimeError):
    """A component did not start or did not become ready in time."""


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
        self.components: dict[str, Component] = {}
        self.kubelet: TestKubelet | None = None
        self.cluster: Cluster | None = None
        self.pki: PKI | None = None
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
        wait_while_running(
            self.components[component],
            ok,
            what=what,
            timeout=self._deadline_left(began),
            error=ControlPlaneError,
            interval=0.25,
        )

    def _start(self, began: float) -> None:
        assert self.dir is not None
        d = self.dir
        (
            etcd_port,
            etcd_peer,
            api_port,
            kcm_port,
            sched_port,
        ) = free_ports(5)
        self.server = f"https://127.0.0.1:{api_port}"
        pki = self.pki = PKI(d / "pki")
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
        self._wait("etcd", lambda: http_ok(f"{etcd_url}/health"), "etcd /health", began)

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
            lambda: http_ok(f"{self.server}/readyz", ctx),
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
            kubectl=tool("kubectl"),
            helm=tool("helm"),
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
            self._wait(name, lambda u=url: http_ok(u, insecure), f"{name} /healthz", began)
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
        comp = Component(name, argv, self.dir / f"{name}.log")
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
