"""Reads a job and its pods, asks the pure :func:`~.decisions.decide`, and applies the answer.

Any number of triggers (the job changed, one of its pods changed, a timer) may ask
for the same job at once; they coalesce: one thread reconciles, the others mark
the job dirty and return, and the running thread goes round once more. So one
job is never reconciled twice at the same time by this process, and the status
patch carries the resourceVersion it was computed from, so a second writer
makes it fail with Conflict rather than overwrite.

Order of effects: status first, then pods (marked unretriable for Kueue, deleted,
created, gates lifted), then Events. A crash between any two
leaves a state from which the next reconciliation reaches the same decision.

A create the API server refuses for good reason but perhaps not for ever (403: a
ResourceQuota, an admission policy; 422: a webhook's or the API's validation) sets the
job's ``FailedCreate`` condition, posts a Warning Event, and reconciles the job again
after the backoff (``base * 2**(n-1)``, capped, ``n`` the refusals in a row), as the
Job controller does: nothing is raised, so no kopf timer or handler stops. The pure
core clears the condition once every pod of the generation exists.

A reconciliation that fails for any reason but a PermanentError (the API server
unreachable, a 5xx, a bug) is tried again after a capped backoff (``error_backoff``,
1 s doubling to 60 s by default, ``n`` the failures in a row), whatever asked for it: a
pod event's handler is not retried by kopf, so without this a failed pod could sit
unacted on until the next event. The error still reaches the caller (kopf logs it).

Identity is the job's uid, not its name: an object of the job's name that an earlier
job of that name controls (deleted, not yet garbage-collected) is never adopted. The
pure core ignores such pods; an AlreadyExists on one of them, or on that job's
ConfigMap or Secret, creates no pod this turn and reconciles again a second later.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import kopf
from pydantic import ValidationError

from rlhfjob_operator import metrics
from rlhfjob_operator.contract import Backoff
from rlhfjob_operator.kube.client import ApiError, Conflict, KubeClient, NotFound
from rlhfjob_operator.kube.decisions import Decision, decide, invalid_spec
from rlhfjob_operator.kube.gang import check_min_available
from rlhfjob_operator.kube.kueue import RETRIABLE_ANNOTATION
from rlhfjob_operator.kube.manifests import (
    build_configmap,
    build_gang,
    build_network_policy,
    build_pod_group,
    build_secret,
    build_service,
)
from rlhfjob_operator.kube.names import SCHEDULING_GATE, job_selector, pod_name
from rlhfjob_operator.kube.scrape import ProgressReader
from rlhfjob_operator.kube.status import (
    format_time,
    of_another_job,
    pod_generation,
    set_condition,
    terminating,
)
from rlhfjob_operator.plan import JobPlan, plan_job
from rlhfjob_operator.spec import RLHFJob, RLHFJobStatus, format_validation_error

__all__ = ["Reconciler"]

_MIN_REQUEUE_S = 0.05  # a decision due now is looked at again this soon, never in a spin
log = logging.getLogger("rlhfjob_operator")
_CONFLICT_RETRIES = 5
_CREATE_THREADS = 8
_REFUSED = (403, 422)  # a create refused: retried with backoff, not a PermanentError
ERROR_BACKOFF = Backoff(base_seconds=1.0, cap_seconds=60.0)  # a failed reconciliation's retry


@dataclass
class _Slot:
    running: bool = False
    dirty: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


class Reconciler:
    def __init__(
        self,
        client: KubeClient,
        *,
        backoff: Backoff,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc),
        progress_interval: float = 15.0,
        error_backoff: Backoff = ERROR_BACKOFF,
    ) -> None:
        self.client = client
        self.backoff = backoff
        self.error_backoff = error_backoff
        self.clock = clock
        self.progress = ProgressReader(interval=progress_interval)
        self.phases = metrics.JobPhases()
        self._guard = threading.Lock()
        self._slots: dict[tuple[str, str], _Slot] = {}
        self._refusals: dict[tuple[str, str], int] = {}  # creates refused in a row
        self._failures: dict[tuple[str, str], int] = {}  # reconciliations failed in a row
        # The one pending "reconcile again" of each job: its timer and when it is due.
        self._retries: dict[tuple[str, str], tuple[threading.Timer, float]] = {}

    def request(self, namespace: str, name: str, *, trigger: str) -> None:
        """Reconcile the job now, or have the reconciliation already running go round
        again. Raises kopf.TemporaryError / PermanentError for the caller's handler."""
        key = (namespace, name)
        with self._guard:
            slot = self._slots.setdefault(key, _Slot())
            if slot.running:
                slot.dirty = True
                return
            slot.running = True
        try:
            while True:
                with self._guard:
                    slot.dirty = False
                self._timed(namespace, name, trigger=trigger)
                with self._guard:
                    self._failures.pop(key, None)
                    if not slot.dirty:
                        return
                trigger = "coalesced"
        except kopf.PermanentError:
            raise
        except Exception:
            with self._guard:
                failures = self._failures[key] = self._failures.get(key, 0) + 1
            self._again(namespace, name, self.error_backoff.delay(failures))
            raise
        finally:
            with self._guard:
                slot.running = False

    def forget(self, namespace: str, name: str) -> None:
        self.phases.forget(namespace, name)
        self.progress.forget(namespace, name)
        with self._guard:
            self._slots.pop((namespace, name), None)
            self._refusals.pop((namespace, name), None)
            self._failures.pop((namespace, name), None)
            retry = self._retries.pop((namespace, name), None)
        if retry is not None:
            retry[0].cancel()

    def _timed(self, namespace: str, name: str, *, trigger: str) -> None:
        metrics.RECONCILES.labels(trigger=trigger).inc()
        began = time.perf_counter()
        try:
            for _ in range(_CONFLICT_RETRIES):
                try:
                    self._once(namespace, name)
                    return
                except Conflict:
                    continue  # the job changed under us: read it again
            raise kopf.TemporaryError(f"{namespace}/{name}: status kept conflicting", delay=1)
        except kopf.TemporaryError:
            metrics.ERRORS.labels(kind="temporary").inc()
            raise
        except kopf.PermanentError:
            metrics.ERRORS.labels(kind="permanent").inc()
            raise
        except ApiError as exc:
            metrics.ERRORS.labels(kind="temporary" if exc.retryable else "unexpected").inc()
            if exc.retryable:
                raise kopf.TemporaryError(str(exc), delay=2) from exc
            raise kopf.PermanentError(str(exc)) from exc
        except Exception:
            metrics.ERRORS.labels(kind="unexpected").inc()
            raise
        finally:
            metrics.DURATION.observe(time.perf_counter() - began)

    def _once(self, namespace: str, name: str) -> None:
        raw = self.client.get_job(namespace, name)
        if raw is None:
            self.forget(namespace, name)
            return
        if raw["metadata"].get("deletionTimestamp"):
            return  # garbage collection removes what it owns
        now = self.clock()
        try:
            job = RLHFJob.model_validate(raw)
            plan = plan_job(job)
            check_min_available(job, plan)
        except (ValidationError, ValueError) as exc:
            text = (
                format_validation_error(exc, root="")
                if isinstance(exc, ValidationError)
                else str(exc)
            )
            status = _status_of(raw)
            decision = invalid_spec(status, f"invalid spec: {text}", now=now)
            self._apply(raw, None, None, decision)
            raise kopf.PermanentError(f"{namespace}/{name}: invalid spec: {text}") from exc
        pods = self.client.list_pods(namespace, job_selector(name))
        generation = job.status.restart_generation if job.status is not None else 0
        driver = pod_name(name, plan.driver, generation=generation)
        driver_pod = next((p for p in pods if p["metadata"]["name"] == driver), None)
        live = self.progress.read(namespace, name, driver_pod, now=now)
        lost = self._lost_nodes(pods, generation=generation)
        decision = decide(
            job, plan, pods, now=now, backoff=self.backoff, live=live, lost_nodes=lost
        )
        self._apply(raw, job, plan, decision)

    def _lost_nodes(self, pods: list[dict[str, Any]], *, generation: int) -> frozenset[str]:
        """The nodes that are not Ready (or gone), of those hosting a terminating pod of
        an older generation: only those pods' nodes matter (status.given_up). A node
        this operator may not read (RBAC) counts as Ready."""
        nodes = {
            p["spec"]["nodeName"]
            for p in pods
            if terminating(p)
            and pod_generation(p) != generation
            and (p.get("spec") or {}).get("nodeName")
        }
        lost = set()
        for node in sorted(nodes):
            try:
                ready = self.client.node_ready(node)
            except ApiError as exc:
                if exc.status != 403:
                    raise
                log.warning("cannot read node %s (%s): its pods get their grace period", node, exc)
                continue
            if not ready:
                lost.add(node)
        return frozenset(lost)

    def _apply(
        self,
        raw: dict[str, Any],
        job: RLHFJob | None,
        plan: JobPlan | None,
        decision: Decision,
    ) -> None:
        meta = raw["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        new = decision.status.model_dump(mode="json", by_alias=True)
        old = raw.get("status") or {}
        if _differs(old, new):
            # Nones delete keys in a merge patch: the status becomes exactly `new`.
            self.client.patch_job_status(
                namespace, name, new, resource_version=meta["resourceVersion"]
            )
        if decision.status.restarts > int(old.get("restarts") or 0):
            metrics.GANG_RESTARTS.inc(decision.status.restarts - int(old.get("restarts") or 0))
        self.phases.set(namespace, name, decision.status.phase)
        for pod in decision.retire:
            self.client.annotate_pod(namespace, pod, {RETRIABLE_ANNOTATION: "false"})
        for pod in decision.delete:
            self.client.delete_pod(namespace, pod)
        if decision.create and job is not None and plan is not None:
            try:
                self._create(job, plan, decision)
            except ApiError as exc:
                if exc.status not in _REFUSED:
                    raise
                self._refused(job, exc)  # nothing to ungate: this turn had pods to create
            else:
                with self._guard:
                    self._refusals.pop((namespace, name), None)
            self._failures.pop((namespace, name), None)
        for pod in decision.ungate:
            self.client.lift_gate(namespace, pod, SCHEDULING_GATE)
        for event in decision.events:
            try:
                self.client.post_event(
                    raw, type_=event.type, reason=event.reason, message=event.message
                )
            except ApiError as exc:  # an Event lost is not worth a retry
                log.warning("event %s for %s/%s not posted: %s", event.reason, namespace, name, exc)
        if decision.delete_job:
            log.info("%s/%s: ttlSecondsAfterFinished passed; deleting the job", namespace, name)
            self.client.delete_job(namespace, name, uid=meta["uid"])
        elif decision.requeue_after is not None:
            # The decision's own clock (a backoff, a deadline, a TTL): nothing else wakes
            # the job then but the resync, a minute later.
            delay = max(_MIN_REQUEUE_S, decision.requeue_after)
            self._again(namespace, name, delay, trigger="requeue", sooner=True)

    def _create(self, job: RLHFJob, plan: JobPlan, decision: Decision) -> None:
        # The Secret before the pods that read it. A fresh token each time, but it only
        # lands when the Secret is absent (409: the job's earlier token stays): the
        # operator cannot read Secrets back, and needs not.
        for obj in (
            build_secret(job, secrets.token_urlsafe(32)),
            build_configmap(job),
            build_service(job, plan),
            build_network_policy(job, plan),
        ):
            if self.client.create_if_absent(obj) is None and self._old_jobs(
                job, obj, self._existing(obj)
            ):
                return  # the pods would read the old job's objects: none until they go
        gen = decision.status.restart_generation
        group = build_pod_group(job, plan, generation=gen)
        if group is not None:  # before the pods that name it
            try:
                self.client.create_if_absent(group)
            except NotFound as exc:
                raise kopf.TemporaryError(
                    f"{job.namespace}/{job.name}: cannot create its {group['apiVersion']} "
                    "PodGroup: is that scheduler's PodGroup CRD installed?",
                    delay=30,
                ) from exc
        wanted = set(decision.create)
        gang = build_gang(job, plan, generation=gen)
        missing = [pod for pod in gang if pod["metadata"]["name"] in wanted]
        # Independent POSTs: in parallel, so a wide gang starts about as fast as a narrow one.
        with ThreadPoolExecutor(max_workers=min(_CREATE_THREADS, len(missing) or 1)) as pool:
            results = pool.map(self.client.create_if_absent, missing)
            for pod, created in zip(missing, results, strict=True):
                if created is not None:
                    metrics.PODS_CREATED.inc()
                else:
                    existing = self._existing(pod)
                    if not self._old_jobs(job, pod, existing):
                        self._check_owner(job, pod["metadata"]["name"], existing)

    def _existing(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        """The object of ``obj``'s kind and name that is there (None: gone since)."""
        meta = obj["metadata"]
        return self.client.get(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"])

    def _old_jobs(self, job: RLHFJob, obj: dict[str, Any], existing: dict[str, Any] | None) -> bool:
        """``obj``'s name exists (AlreadyExists): True when the one there (``existing``,
        None if gone since) belongs to an earlier job of this name (deleted, its objects
        not yet collected), which is never adopted: the job is reconciled again in a
        second, when they may be gone."""
        meta = obj["metadata"]
        if existing is None or not of_another_job(existing, job.metadata.uid):
            return False
        log.info(
            "%s/%s: %s %s is an earlier job's, not yet garbage-collected; looking again in 1s",
            job.namespace, job.name, obj["kind"], meta["name"],
        )  # fmt: skip
        self._again(job.namespace, job.name, 1.0)
        return True

    def _refused(self, job: RLHFJob, exc: ApiError) -> None:
        """Record a refused create (``FailedCreate`` condition, Warning Event) and
        reconcile the job again after the backoff (see the module's docstring)."""
        key = (job.namespace, job.name)
        with self._guard:
            refusals = self._refusals[key] = self._refusals.get(key, 0) + 1
        delay = max(1.0, self.backoff.delay(refusals))
        msg = f"{exc.message}; retrying in {delay:g}s (refusal {refusals} in a row)"
        log.warning("%s/%s: %s", job.namespace, job.name, msg)
        raw = self.client.get_job(job.namespace, job.name)
        if raw is not None and raw["metadata"].get("uid") == job.metadata.uid:
            status = _status_of(raw) or RLHFJobStatus()
            reason = exc.reason or f"Status{exc.status}"
            now = format_time(self.clock())
            set_condition(status, "FailedCreate", True, reason=reason, message=msg, now=now)
            try:
                self.client.patch_job_status(
                    job.namespace,
                    job.name,
                    status.model_dump(mode="json", by_alias=True),
                    resource_version=raw["metadata"]["resourceVersion"],
                )
                self.client.post_event(raw, type_="Warning", reason="FailedCreate", message=msg)
            except ApiError as again:  # the retry records it again
                log.warning("%s/%s: FailedCreate not recorded: %s", *key, again)
        self._again(*key, delay)

    def _again(
        self,
        namespace: str,
        name: str,
        delay: float,
        *,
        trigger: str = "retry",
        sooner: bool = False,
    ) -> None:
        """Reconcile the job again in ``delay`` seconds (once: a later call replaces the
        pending one; with ``sooner``, only when it comes before it)."""
        key = (namespace, name)
        due = time.monotonic() + delay
        retry = threading.Timer(delay, self._retry, args=(namespace, name, trigger))
        retry.daemon = True
        with self._guard:
            old = self._retries.get(key)
            if sooner and old is not None and old[1] <= due:
                return
            self._retries[key] = (retry, due)
        if old is not None:
            old[0].cancel()
        retry.start()

    def _retry(self, namespace: str, name: str, trigger: str) -> None:
        with self._guard:
            self._retries.pop((namespace, name), None)
        try:
            self.request(namespace, name, trigger=trigger)
        except Exception:  # no kopf handler above this thread: say it here
            log.exception("%s/%s: reconciling again", namespace, name)

    def _check_owner(self, job: RLHFJob, pod: str, existing: dict[str, Any] | None) -> None:
        """A pod of our name already exists (``existing``, None if gone since): ours (an
        earlier run made it) or a stranger's."""
        owners = (existing or {}).get("metadata", {}).get("ownerReferences") or []
        if existing is not None and not any(o.get("uid") == job.metadata.uid for o in owners):
            raise kopf.PermanentError(
                f"pod {pod} exists and is not owned by this job; delete it or rename the job"
            )


def _status_of(raw: dict[str, Any]) -> RLHFJobStatus | None:
    try:
        return RLHFJobStatus.model_validate(raw.get("status") or {})
    except ValidationError:
        return None


def _differs(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether patching ``new`` over ``old`` would change anything."""
    return any(old.get(key) != value for key, value in new.items() if value is not None) or any(
        key in old for key, value in new.items() if value is None
    )
