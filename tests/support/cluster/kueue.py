"""`Kueue`: the real Kueue controller manager against our control plane, on loopback.

`make cluster-bin` builds it from the Go module proxy (tests/cluster/build.sh) and
copies its CRDs and webhook manifests next to it. Here:

- its CRDs are applied (server-side: the Workload CRD is too big for the
  last-applied annotation) and served without a conversion webhook: everything
  here, Kueue included, speaks v1beta2, their storage version;
- it serves its webhooks on 127.0.0.1 with a certificate of the control plane's CA
  for that IP, and only its own (kueue.x-k8s.io) and the Pod ones are registered,
  by URL; the Pod webhooks and Kueue's managed namespaces are limited to
  namespaces labelled `MANAGED_LABEL`, so no other test's pod goes through it;
- Kueue v0.17 reads its metrics certificate from the fixed /etc/kueue/metrics/certs
  when it does not manage certificates itself; the process runs in a mount
  namespace of its own (`unshare -m`, `-r` too when not root) with an overlay on
  /etc that holds only that directory, so nothing is written outside the temp dir.

    with Kueue(cluster) as kueue:
        ns = kueue.namespace()             # labelled, deleted while Kueue runs
        ...

Edge cases: the namespaces it made are deleted (and waited for) before Kueue stops,
since its pods carry the finalizer `kueue.x-k8s.io/managed` that only Kueue
removes; one still there after the wait has that finalizer stripped from its pods,
so teardown is bounded and leaves nothing behind.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import os
import shutil
import ssl
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from .handle import Cluster
from .paths import kueue_dir, missing_kueue
from .processes import Component, free_ports, http_ok, wait_until, wait_while_running
from .session import Missing

MANAGED_LABEL = ("rlhfjob.test/kueue", "managed")
_FINALIZER = "kueue.x-k8s.io/managed"
_WEBHOOK_CONFIG = "rlhfjob-test-kueue"
# The webhooks of manifests.yaml that are registered: Kueue's own kinds and Pods.
_OWN = ("/mutate-kueue-x-k8s-io-", "/validate-kueue-x-k8s-io-")
_POD = ("/mutate--v1-pod", "/validate--v1-pod")


class KueueError(RuntimeError):
    """Kueue did not start or did not become ready in time."""


class Kueue:
    """Kueue v$KUEUE_VERSION's controller manager (Pod integration only, no leader
    election) against `cluster`, which must be our control plane. `start()` returns
    self, or raises Missing (not built) or KueueError; `stop()` is idempotent and
    bounded."""

    def __init__(self, cluster: Cluster, *, start_timeout: float = 120.0) -> None:
        if cluster.control_plane is None or cluster.control_plane.pki is None:
            raise KueueError("Kueue runs against the test control plane, not a KUBECONFIG")
        self.cluster = cluster
        self.start_timeout = start_timeout
        self.dir: Path | None = None
        self.component: Component | None = None
        self.webhook_port = 0
        self._namespaces: list[str] = []

    def __enter__(self) -> Kueue:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- public ------------------------------------------------------------

    def start(self) -> Kueue:
        missing = missing_kueue()
        if missing:
            raise Missing(f"missing {', '.join(map(str, missing))}: run make cluster-bin")
        self.dir = Path(tempfile.mkdtemp(prefix="rlhfjob-kueue-"))
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def namespace(self, prefix: str = "kq-") -> str:
        """A new namespace whose pods Kueue manages (deleted by `stop`)."""
        name = self.cluster.create_namespace(prefix)
        k8s.CoreV1Api(self.cluster.api_client).patch_namespace(
            name, {"metadata": {"labels": dict([MANAGED_LABEL])}}
        )
        self._namespaces.append(name)
        return name

    def log_tail(self, lines: int = 60) -> str:
        return self.component.tail(lines) if self.component else "(not started)"

    def stop(self) -> None:
        core = k8s.CoreV1Api(self.cluster.api_client)
        for ns in self._namespaces:
            self.cluster.delete_namespace(ns)
        with contextlib.suppress(TimeoutError):
            wait_until(
                lambda: not [n for n in self._namespaces if _exists(core, n)],
                timeout=60,
                what="Kueue's namespaces deleted",
            )
        for ns in self._namespaces:
            _strip_finalizers(core, ns)
        self._namespaces.clear()
        adm = k8s.AdmissionregistrationV1Api(self.cluster.api_client)
        with contextlib.suppress(ApiException):
            adm.delete_mutating_webhook_configuration(_WEBHOOK_CONFIG)
        with contextlib.suppress(ApiException):
            adm.delete_validating_webhook_configuration(_WEBHOOK_CONFIG)
        if self.component is not None:
            self.component.stop()
            self.component = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    # -- startup -----------------------------------------------------------

    def _start(self) -> None:
        assert self.dir is not None
        cp = self.cluster.control_plane
        assert cp is not None and cp.pki is not None
        d, config = self.dir, kueue_dir() / "config"
        self.cluster.kubectl_run(
            "apply", "--server-side", "--force-conflicts", "-f", str(config / "crd"), timeout=120
        )
        self.cluster.kubectl_run(
            "wait", "--for=condition=Established", "--timeout=60s",
            *[f"crd/{_crd_name(p)}" for p in sorted((config / "crd").glob("*.yaml"))],
            timeout=90,
        )  # fmt: skip
        with contextlib.suppress(ApiException):  # its default namespace; 409 if there
            k8s.CoreV1Api(self.cluster.api_client).create_namespace(
                {"metadata": {"name": "kueue-system"}}
            )
        serving = cp.pki.issue("kueue-webhook", "kueue-webhook", server_names=["127.0.0.1"])
        certs, metrics_certs = d / "certs", d / "etc-upper" / "kueue" / "metrics" / "certs"
        for target in (certs, metrics_certs):
            target.mkdir(parents=True)
            shutil.copy(serving.cert, target / "tls.crt")
            shutil.copy(serving.key, target / "tls.key")
        (d / "etc-work").mkdir()
        self.webhook_port, health, metrics = free_ports(3)
        conf = d / "config.yaml"
        conf.write_text(yaml.safe_dump(self._configuration(certs, health, metrics)))
        overlay = f"lowerdir=/etc,upperdir={d / 'etc-upper'},workdir={d / 'etc-work'}"
        argv = [
            "unshare",
            "-m" if os.geteuid() == 0 else "-rm",
            "sh",
            "-c",
            f'mount -t overlay overlay -o {overlay} /etc && exec "$@"',
            "kueue-in-its-mount-namespace",
            str(kueue_dir() / "bin" / "kueue"),
            f"--config={conf}",
            f"--kubeconfig={self.cluster.kubeconfig}",
            # The visibility API server wants an APIService and a Service to reach it.
            "--feature-gates=VisibilityOnDemand=false",
            "--zap-log-level=info",
        ]
        self.component = Component("kueue", argv, d / "kueue.log")
        self.component.start()
        self._wait(lambda: http_ok(f"http://127.0.0.1:{health}/readyz"), "Kueue /readyz")
        ctx = ssl.create_default_context(cafile=str(cp.pki.ca.cert))
        port = self.webhook_port
        # Any answer over TLS with our CA (even 405 or 404) means the webhook server is up.
        self._wait(lambda: _tls_answers(port, ctx), "Kueue's webhook server (TLS)")
        self._register_webhooks(config / "webhook" / "manifests.yaml", cp.pki.ca.cert)

    def _configuration(self, certs: Path, health: int, metrics: int) -> dict[str, Any]:
        selector = {"matchLabels": dict([MANAGED_LABEL])}
        return {
            "apiVersion": "config.kueue.x-k8s.io/v1beta2",
            "kind": "Configuration",
            "namespace": "kueue-system",
            "manageJobsWithoutQueueName": False,
            "managedJobsNamespaceSelector": selector,
            "leaderElection": {"leaderElect": False},
            "internalCertManagement": {"enable": False},
            "webhook": {"host": "127.0.0.1", "port": self.webhook_port, "certDir": str(certs)},
            "health": {"healthProbeBindAddress": f"127.0.0.1:{health}"},
            "metrics": {"bindAddress": f"127.0.0.1:{metrics}"},
            "integrations": {"frameworks": ["pod"]},
        }

    def _register_webhooks(self, manifests: Path, ca_cert: Path) -> None:
        ca = base64.b64encode(ca_cert.read_bytes()).decode()
        adm = k8s.AdmissionregistrationV1Api(self.cluster.api_client)
        for doc in yaml.safe_load_all(manifests.read_text()):
            if not doc:
                continue
            hooks = []
            for hook in doc["webhooks"]:
                path = hook["clientConfig"]["service"]["path"]
                if not path.startswith(_OWN + _POD):
                    continue
                hook["clientConfig"] = {
                    "url": f"https://127.0.0.1:{self.webhook_port}{path}",
                    "caBundle": ca,
                }
                if path in _POD:
                    hook["namespaceSelector"] = {"matchLabels": dict([MANAGED_LABEL])}
                hooks.append(hook)
            body = {"metadata": {"name": _WEBHOOK_CONFIG}, "webhooks": hooks}
            if doc["kind"] == "MutatingWebhookConfiguration":
                adm.create_mutating_webhook_configuration(body)
            else:
                adm.create_validating_webhook_configuration(body)

    def _wait(self, ok: Callable[[], Any], what: str) -> None:
        assert self.component is not None
        wait_while_running(
            self.component, ok, what=what, timeout=self.start_timeout, error=KueueError
        )


def _crd_name(path: Path) -> str:
    """kueue.x-k8s.io_workloads.yaml -> workloads.kueue.x-k8s.io"""
    group, _, plural = path.stem.partition("_")
    return f"{plural}.{group}"


def _tls_answers(port: int, ctx: ssl.SSLContext) -> bool:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=2)
    try:
        conn.request("GET", "/")
        conn.getresponse().read()
        return True
    except OSError:
        return False
    finally:
        conn.close()


def _exists(core: k8s.CoreV1Api, namespace: str) -> bool:
    try:
        core.read_namespace(namespace)
        return True
    except ApiException as e:
        if e.status == 404:
            return False
        raise


def _strip_finalizers(core: k8s.CoreV1Api, namespace: str) -> None:
    """Remove Kueue's finalizer from the pods left in `namespace` (Kueue gone or stuck)."""
    try:
        pods = core.list_namespaced_pod(namespace).items
    except ApiException:
        return
    for pod in pods:
        kept = [f for f in pod.metadata.finalizers or [] if f != _FINALIZER]
        if kept != (pod.metadata.finalizers or []):
            with contextlib.suppress(ApiException):
                core.patch_namespaced_pod(
                    pod.metadata.name, namespace, {"metadata": {"finalizers": kept or None}}
                )
