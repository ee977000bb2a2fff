"""A small blocking Kubernetes REST client speaking plain JSON dicts (camelCase, as on
the wire), so that the pure builders' output goes out unchanged and observed objects
come back in the shape the pure functions read.

Credentials come from the official client's loaders (a kubeconfig or the in-cluster
ServiceAccount), the same place kopf's ``login_via_client`` takes them from. HTTP
errors become :class:`ApiError` subclasses, raised ``from`` the original.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import requests
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from rlhfjob_operator import metrics
from rlhfjob_operator.kube.ratelimit import TokenBucket
from rlhfjob_operator.spec import GROUP, PLURAL, VERSION

__all__ = ["AlreadyExists", "ApiError", "Conflict", "KubeClient", "NotFound", "QuotaExceeded"]

_TIMEOUT = (5.0, 30.0)
COMPONENT = "rlhfjob-operator"


class ApiError(RuntimeError):
    """The API server refused a request (or could not be reached: status 0)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status, self.reason, self.message = status, reason, message

    @property
    def retryable(self) -> bool:
        return self.status in (0, 409, 429) or self.status >= 500


class NotFound(ApiError):
    pass


class Conflict(ApiError):
    """A stale resourceVersion: read again and retry."""


class AlreadyExists(ApiError):
    pass


class QuotaExceeded(ApiError):
    """A ResourceQuota refused a create (403): retryable, the quota may grow or free up."""

    @property
    def retryable(self) -> bool:
        return True


def load_configuration(kubeconfig: Path | None = None) -> k8s.Configuration:
    """In-cluster credentials when running in a pod without ``kubeconfig``, else the file
    (``kubeconfig``, $KUBECONFIG or ~/.kube/config)."""
    cfg = k8s.Configuration()
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        k8s_config.load_incluster_config(client_configuration=cfg)
    else:
        k8s_config.load_kube_config(
            config_file=str(kubeconfig) if kubeconfig else None, client_configuration=cfg
        )
    return cfg


class KubeClient:
    """Blocking; safe to share between threads (one HTTP session per thread). Every
    request first takes a token of the client-side rate limit (``qps`` a second, bursts
    of ``burst``; ``qps <= 0``: none), which all threads share."""

    def __init__(
        self, configuration: k8s.Configuration, *, qps: float = 100.0, burst: int = 200
    ) -> None:
        self._cfg = configuration
        self._local = threading.local()
        self.limiter = TokenBucket(qps, burst)
        self.instance = socket.gethostname()

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            # Environment CA bundles and proxies must not override the cluster's own CA
            # (requests lets REQUESTS_CA_BUNDLE beat session.verify).
            session.trust_env = False
            cfg = self._cfg
            session.verify = (
                cfg.ssl_ca_cert if cfg.verify_ssl and cfg.ssl_ca_cert else cfg.verify_ssl
            )
            if cfg.cert_file and cfg.key_file:
                session.cert = (cfg.cert_file, cfg.key_file)
            self._local.session = session
        return session

    def _headers(self, content_type: str) -> dict[str, str]:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        cfg = self._cfg
        token = cfg.get_api_key_with_prefix("BearerToken") or cfg.get_api_key_with_prefix(
            "authorization"
        )
        if token:
            headers["Authorization"] = token if " " in token else f"Bearer {token}"
        return headers

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        url = self._cfg.host.rstrip("/") + path
        metrics.CLIENT_THROTTLED.inc(self.limiter.acquire())
        try:
            resp = self._session().request(
                method,
                url,
                json=body,
                params=params,
                headers=self._headers(content_type),
                timeout=_TIMEOUT,
            )
        except requests.RequestException as exc:
            metrics.API_REQUESTS.labels(method=method, code="0").inc()
            raise ApiError(0, "Unreachable", f"{method} {path}: {exc}") from exc
        metrics.API_REQUESTS.labels(method=method, code=str(resp.status_code)).inc()
        if resp.status_code < 300:
            return resp.json() if resp.content else {}
        try:
            payload = resp.json()
        except ValueError:
            payload = {"reason": resp.reason, "message": resp.text}
        reason = str(payload.get("reason") or resp.reason)
        message = f"{method} {path}: {payload.get('message') or resp.text}"
        kind: type[ApiError] = ApiError
        if resp.status_code == 404:
            kind = NotFound
        elif resp.status_code == 409:
            kind = AlreadyExists if reason == "AlreadyExists" else Conflict
        elif resp.status_code == 403 and "exceeded quota" in message:
            kind = QuotaExceeded
        raise kind(resp.status_code, reason, message)

    # -- RLHFJobs -----------------------------------------------------------

    @staticmethod
    def _job_path(namespace: str, name: str = "") -> str:
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
        return f"{path}/{name}" if name else path

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The RLHFJob, or None on 404."""
        try:
            return self.request("GET", self._job_path(namespace, name))
        except NotFound:
            return None

    def patch_job_status(
        self, namespace: str, name: str, status: dict[str, Any], *, resource_version: str
    ) -> dict[str, Any]:
        """Merge-patch the status subresource; Conflict if the job changed since it was read
        (``resource_version`` is the precondition). None values delete keys."""
        return self.request(
            "PATCH",
            self._job_path(namespace, name) + "/status",
            body={"metadata": {"resourceVersion": resource_version}, "status": status},
            content_type="application/merge-patch+json",
        )

    def delete_job(self, namespace: str, name: str, *, uid: str) -> None:
        """Delete in the background (its objects go by garbage collection); the uid
        precondition spares a job re-created under the same name."""
        with contextlib.suppress(NotFound, Conflict):
            self.request(
                "DELETE",
                self._job_path(namespace, name),
                body={"propagationPolicy": "Background", "preconditions": {"uid": uid}},
            )

    # -- owned objects --------------------------------------------------------

    @staticmethod
    def _collection(api_version: str, kind: str, namespace: str) -> str:
        plural = {
            "Pod": "pods",
            "Service": "services",
            "ConfigMap": "configmaps",
            "Secret": "secrets",
        }.get(kind)
        if plural is not None:
            return f"/api/v1/namespaces/{namespace}/{plural}"
        if kind == "NetworkPolicy":
            return f"/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies"
        if kind == "PodGroup":  # Volcano's or scheduler-plugins': the same plural
            return f"/apis/{api_version}/namespaces/{namespace}/podgroups"
        raise ValueError(f"no path for {api_version} {kind}")

    def create_if_absent(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        """POST ``obj``; the created object, or None when one of that name exists."""
        meta = obj["metadata"]
        try:
            return self.request(
                "POST",
                self._collection(obj["apiVersion"], obj["kind"], meta["namespace"]),
                body=obj,
            )
        except AlreadyExists:
            return None

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.request("GET", f"{self._collection(api_version, kind, namespace)}/{name}")
        except NotFound:
            return None

    def node_ready(self, name: str) -> bool:
        """Whether node ``name`` has its Ready condition True; False when it is NotReady,
        Unknown (its kubelet stopped reporting) or gone (404)."""
        try:
            node = self.request("GET", f"/api/v1/nodes/{name}")
        except NotFound:
            return False
        conditions = (node.get("status") or {}).get("conditions") or []
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

    def list_pods(self, namespace: str, selector: Mapping[str, str]) -> list[dict[str, Any]]:
        labels = ",".join(f"{k}={v}" for k, v in selector.items())
        out = self.request(
            "GET", f"/api/v1/namespaces/{namespace}/pods", params={"labelSelector": labels}
        )
        return list(out.get("items") or [])

    def delete_pod(self, namespace: str, name: str) -> None:
        """Graceful delete; absent already is fine."""
        with contextlib.suppress(NotFound):
            self.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}")

    def annotate_pod(self, namespace: str, name: str, annotations: dict[str, str]) -> None:
        """Merge ``annotations`` into the pod's (a pod being deleted too; absent is fine)."""
        with contextlib.suppress(NotFound):
            self.request(
                "PATCH",
                f"/api/v1/namespaces/{namespace}/pods/{name}",
                body={"metadata": {"annotations": annotations}},
                content_type="application/merge-patch+json",
            )

    def lift_gate(self, namespace: str, name: str, gate: str) -> None:
        """Remove scheduling gate ``gate`` from the pod (a strategic merge patch: other
        gates stay, an absent gate or pod is fine)."""
        body = {"spec": {"schedulingGates": [{"$patch": "delete", "name": gate}]}}
        with contextlib.suppress(NotFound):
            self.request(
                "PATCH",
                f"/api/v1/namespaces/{namespace}/pods/{name}",
                body=body,
                content_type="application/strategic-merge-patch+json",
            )

    def post_event(self, obj: Mapping[str, Any], *, type_: str, reason: str, message: str) -> None:
        """A core/v1 Event about ``obj`` (an RLHFJob as read from the API)."""
        meta = obj["metadata"]
        now = dt.datetime.now(dt.timezone.utc)
        stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": obj["apiVersion"],
                "kind": obj["kind"],
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": self.instance,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "eventTime": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "action": reason,
            "count": 1,
        }
        self.request("POST", f"/api/v1/namespaces/{meta['namespace']}/events", body=event)
