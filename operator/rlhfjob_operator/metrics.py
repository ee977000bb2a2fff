"""The operator's Prometheus metrics (prefix ``rlhfjob_operator_``), in a registry of
their own, served by :func:`serve`.

- ``rlhfjob_operator_reconciles_total{trigger}``: reconciliations run, by what asked
  (change, pod, timer).
- ``rlhfjob_operator_reconcile_errors_total{kind}``: failed ones (temporary: retried;
  permanent: the job is marked Failed; unexpected: a bug).
- ``rlhfjob_operator_reconcile_duration_seconds``: histogram of one reconciliation.
- ``rlhfjob_operator_jobs{phase}``: RLHFJobs this operator sees, by phase ("" before
  the first status).
- ``rlhfjob_operator_gang_restarts_total``: gangs deleted and re-created after a failure.
- ``rlhfjob_operator_pods_created_total``: pods created.
- ``rlhfjob_operator_client_throttled_seconds_total``: time requests waited for the
  client-side rate limit (``--kube-api-qps``, ``--kube-api-burst``).
- ``rlhfjob_operator_api_requests_total{method,code}``: requests of the operator's own
  client (client-go's ``rest_client_requests_total``; code 0: no answer). kopf's
  watches and its annotation and finalizer patches are not counted.
- ``rlhfjob_operator_leader``: 1 while this replica reconciles (it holds the Lease, or
  runs without ``--leader-elect``), 0 while it stands by.
"""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from rlhfjob_operator.spec import CONDITION_TYPES

__all__ = ["REGISTRY", "JobPhases", "serve"]

REGISTRY = CollectorRegistry(auto_describe=True)
PREFIX = "rlhfjob_operator"

RECONCILES = Counter(
    f"{PREFIX}_reconciles", "Reconciliations run, by trigger.", ["trigger"], registry=REGISTRY
)
ERROR_KINDS = ("temporary", "permanent", "unexpected")
ERRORS = Counter(
    f"{PREFIX}_reconcile_errors",
    "Reconciliations that failed, by kind (temporary, permanent, unexpected).",
    ["kind"],
    registry=REGISTRY,
)
DURATION = Histogram(
    f"{PREFIX}_reconcile_duration_seconds",
    "Time one reconciliation took.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
JOBS = Gauge(f"{PREFIX}_jobs", "RLHFJobs seen, by phase.", ["phase"], registry=REGISTRY)
GANG_RESTARTS = Counter(
    f"{PREFIX}_gang_restarts", "Gangs re-created after a pod failed.", registry=REGISTRY
)
PODS_CREATED = Counter(f"{PREFIX}_pods_created", "Pods created.", registry=REGISTRY)
CLIENT_THROTTLED = Counter(
    f"{PREFIX}_client_throttled_seconds",
    "Time requests to the API server waited for the client-side rate limit.",
    registry=REGISTRY,
)
API_REQUESTS = Counter(
    f"{PREFIX}_api_requests",
    "Requests of the operator's own client to the API server, by method and status code.",
    ["method", "code"],
    registry=REGISTRY,
)
LEADER = Gauge(
    f"{PREFIX}_leader",
    "1 while this replica reconciles (holds the Lease, or no election), 0 on standby.",
    registry=REGISTRY,
)

# Every error kind is exported from the start, at 0: a series born at 1 makes
# increase() read no change, so the RLHFJobOperatorReconcileErrors alert would miss
# the first error (a permanent one is never retried, so it is often the only one).
for _phase in ("", *CONDITION_TYPES):
    JOBS.labels(phase=_phase).set(0)
for _kind in ERROR_KINDS:
    ERRORS.labels(kind=_kind)


class JobPhases:
    """Keeps ``rlhfjob_operator_jobs`` equal to the count of known jobs per phase."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._phases: dict[tuple[str, str], str] = {}

    def set(self, namespace: str, name: str, phase: str | None) -> None:
        with self._lock:
            self._phases[(namespace, name)] = phase or ""
            self._publish()

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._phases.pop((namespace, name), None)
            self._publish()

    def _publish(self) -> None:
        counts = dict.fromkeys(("", *CONDITION_TYPES), 0)
        for phase in self._phases.values():
            counts[phase] = counts.get(phase, 0) + 1
        for phase, count in counts.items():
            JOBS.labels(phase=phase).set(count)


def serve(port: int, host: str = "0.0.0.0") -> WSGIServer:
    """Serve /metrics on ``host:port`` in a daemon thread; port 0 picks a free one
    (read it from the returned server's ``server_port``)."""
    server, _thread = start_http_server(port, addr=host, registry=REGISTRY)
    return server
