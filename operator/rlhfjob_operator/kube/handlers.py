"""The kopf shell: which events reconcile which job. All decisions live in decisions.py.

- RLHFJob created, resumed (operator start) or its spec changed -> reconcile it.
- A pod labelled ``rlhf.dev/job`` was added, changed or deleted -> reconcile its
  job (the last pod of a generation appearing is what lifts the gang's gates).
- Timers, only while they matter: ``progress`` (Running: read the driver's progress
  into the status, every ``--progress-interval`` seconds; kube/scrape.py) and
  ``resync`` (not finished: every ``--resync-interval`` seconds, so that a trigger
  lost anywhere, a dropped watch event or a failure past its retries, still gets
  acted on). A decision's own clock (the backoff before a restart,
  ``activeDeadlineSeconds``, ``startupTimeoutSeconds``, the TTL) is its
  ``requeue_after``, which the reconciler turns into one timer of the job's.
- An RLHFJob deleted -> forget it (its objects go by ownerReference GC).

kopf keeps its own bookkeeping in ``rlhf.dev/``-prefixed annotations, never in
the status, whose schema is closed. Timers make kopf put its finalizer on
jobs; it removes it itself on deletion.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from rlhfjob_operator.kube.names import LABEL_JOB
from rlhfjob_operator.kube.reconciler import Reconciler
from rlhfjob_operator.spec import GROUP, PLURAL, VERSION

__all__ = ["build_registry"]

_FINAL = ("Succeeded", "Failed")


def _phase(body: Any) -> str | None:
    return (body.get("status") or {}).get("phase")


def _run_policy(body: Any) -> dict[str, Any]:
    return dict((body.get("spec") or {}).get("runPolicy") or {})


def _running(body: Any, **_: Any) -> bool:
    return _phase(body) == "Running"


def _unfinished(body: Any, **_: Any) -> bool:
    return _phase(body) not in _FINAL


def build_registry(
    reconciler: Reconciler, *, resync_interval: float = 60.0
) -> kopf.OperatorRegistry:
    """A kopf registry with the operator's handlers bound to ``reconciler``."""
    registry = kopf.OperatorRegistry()
    job = (GROUP, VERSION, PLURAL)

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=GROUP, key="last-handled-configuration"
        )
        settings.persistence.finalizer = f"{GROUP}/operator"
        # Our own Events say what happened; kopf's per-handler chatter stays in the log.
        settings.posting.level = logging.WARNING
        settings.watching.server_timeout = 60
        settings.networking.request_timeout = 30
        # A timer's tick reconciles in a thread, and the TTL tick is what deletes the job:
        # kopf, told of the deletion while that tick still returns, would find the timer
        # not yet exited after its few zero-time loop cycles and hold the finalizer for
        # another look in 60 s (its default), so the job outlived its TTL by a minute.
        # Wait a little for the tick instead, and look again every second.
        settings.background.instant_exit_timeout = 0.5
        settings.background.cancellation_polling = 1.0

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_via_client(**kwargs)

    @kopf.on.resume(*job, registry=registry)
    @kopf.on.create(*job, registry=registry)
    @kopf.on.update(*job, field="spec", registry=registry)
    def on_job(**kwargs: Any) -> None:
        reconciler.request(kwargs["namespace"], kwargs["name"], trigger="change")

    @kopf.on.event(*job, registry=registry)
    def on_job_event(**kwargs: Any) -> None:
        if kwargs["event"].get("type") == "DELETED":
            reconciler.forget(kwargs["namespace"], kwargs["name"])

    @kopf.on.event("", "v1", "pods", labels={LABEL_JOB: kopf.PRESENT}, registry=registry)
    def on_pod(**kwargs: Any) -> None:
        reconciler.request(kwargs["namespace"], kwargs["labels"][LABEL_JOB], trigger="pod")

    for timer_name, when, interval in (
        ("progress", _running, reconciler.progress.interval),
        ("resync", _unfinished, resync_interval),
    ):

        def tick(_t: str = timer_name, **kwargs: Any) -> None:
            reconciler.request(kwargs["namespace"], kwargs["name"], trigger=_t)

        kopf.timer(*job, id=timer_name, interval=interval, when=when, registry=registry)(tick)

    return registry
