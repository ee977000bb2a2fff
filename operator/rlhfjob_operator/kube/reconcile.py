"""Pure: (job, its observed pods, now) -> the new status, the Events, what to create/delete.

The kopf handlers read the job and its pods, call :func:`decide`, write the
status (first: so that a crash after it never loses a decision), then apply
the pod changes and post the Events. Re-running :func:`decide` on the same
observations gives the same answer, so an operator killed at any point resumes
without duplicating pods.

The gang's life: pods of generation ``status.restartGeneration`` are created
(create-if-absent; a pod that vanishes is re-created under the same name).
When every pod runs and is ready the job is Running. The driver pod
succeeding makes the job Succeeded (the other pods are then deleted). Any pod
of the gang failing deletes the whole gang; after a backoff of
``base * 2**(restarts-1)`` seconds (capped), the next generation is created,
until ``runPolicy.backoffLimit`` restarts are spent: then Failed. A pod that
exits with :data:`~rlhfjob_operator.contract.EXIT_PERMANENT` fails the job at once
(the contract's :func:`~rlhfjob_operator.contract.next_attempt` decides).
A new generation is only created once every pod of older ones is gone (the
new driver reuses the old one's DNS name). ``suspend`` deletes the pods and
keeps the status; resuming starts a new generation and restarts the
``activeDeadlineSeconds`` clock. Succeeded and Failed are final; the TTL then
deletes the job.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from rlhfjob_operator import progress
from rlhfjob_operator.contract import EXIT_RETRYABLE, Backoff, Final, next_attempt
from rlhfjob_operator.kube.names import (
    ANNOTATION_EPISODE,
    ANNOTATION_LAST_CHECKPOINT,
    LABEL_GENERATION,
    pod_name,
)
from rlhfjob_operator.plan import JobPlan
from rlhfjob_operator.restarts import restart_origin_on_kubernetes
from rlhfjob_operator.spec import Condition, ConditionType, ModelStatus, RLHFJob, RLHFJobStatus

__all__ = [
    "Backoff",
    "Decision",
    "Event",
    "decide",
    "format_time",
    "invalid_spec",
    "parse_time",
]

Pod = Mapping[str, Any]
_FINAL = ("Succeeded", "Failed")


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event about the job."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True, kw_only=True)
class Decision:
    status: RLHFJobStatus
    events: tuple[Event, ...] = ()
    create: tuple[str, ...] = ()  # names of pods (current generation) to create
    delete: tuple[str, ...] = ()  # names of pods to delete
    delete_job: bool = False  # the TTL after finishing has passed
    requeue_after: float | None = None  # look again then, even if nothing changes


def format_time(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(s: str | None) -> dt.datetime | None:
    if not s:
        return None
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00"))


def _set_condition(
    status: RLHFJobStatus,
    type_: ConditionType,
    value: bool,
    *,
    reason: str,
    message: str,
    now: str,
) -> None:
    """Kubernetes semantics: lastTransitionTime moves only when the status flips."""
    text = "True" if value else "False"
    old = status.condition(type_)
    if old is None and not value:
        return  # a condition that never held is not worth a False entry
    changed = old is None or old.status != text
    cond = Condition.model_validate(
        {
            "type": type_,
            "status": text,
            "reason": reason,
            "message": message,
            "lastTransitionTime": now if changed or old is None else old.last_transition_time,
            "lastUpdateTime": now,
        }
    )
    if old is not None and not changed and (old.reason, old.message) == (reason, message):
        return
    status.conditions = [c for c in status.conditions if c.type != type_] + [cond]


def _phase(pod: Pod) -> str:
    return str((pod.get("status") or {}).get("phase") or "Pending")


def _terminating(pod: Pod) -> bool:
    return bool(pod["metadata"].get("deletionTimestamp"))


def _generation(pod: Pod) -> int | None:
    raw = (pod["metadata"].get("labels") or {}).get(LABEL_GENERATION)
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


def _ready(pod: Pod) -> bool:
    if _phase(pod) != "Running" or _terminating(pod):
        return False
    conds = (pod.get("status") or {}).get("conditions") or []
    ready = [c for c in conds if c.get("type") == "Ready"]
    return not ready or ready[0].get("status") == "True"


def _exit(pod: Pod) -> tuple[int | None, str]:
    """The first failed container's exit code and a line saying why."""
    status = pod.get("status") or {}
    for cs in status.get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated") or {}
        if term and term.get("exitCode", 0) != 0:
            why = term.get("reason") or "Error"
            if term.get("message"):
                why += f": {term['message']}"
            return int(term["exitCode"]), why
    return None, str(status.get("reason") or status.get("message") or "Failed")


def _active(pods: Iterable[Pod]) -> tuple[str, ...]:
    """Pods worth deleting: not already going, not finished (their logs stay readable)."""
    return tuple(
        sorted(
            p["metadata"]["name"]
            for p in pods
            if not _terminating(p) and _phase(p) not in ("Succeeded", "Failed")
        )
    )


def _progress(status: RLHFJobStatus, driver: Pod | None) -> None:
    """Episode and reward from the driver: its pod's annotations, or the termination
    message it ended with (``rlhfjob_operator.progress``), which wins."""
    if driver is None:
        return
    notes = driver["metadata"].get("annotations") or {}
    episode = notes.get(ANNOTATION_EPISODE)
    if episode is not None and episode.isdigit():
        status.episode = int(episode)
    if notes.get(ANNOTATION_LAST_CHECKPOINT):
        status.last_checkpoint = notes[ANNOTATION_LAST_CHECKPOINT]
    for cs in (driver.get("status") or {}).get("containerStatuses") or []:
        ended = progress.parse(((cs.get("state") or {}).get("terminated") or {}).get("message"))
        if ended is not None:
            status.episode = ended.episode
            status.reward = ended.reward


def _counts(status: RLHFJobStatus, job: RLHFJob, plan: JobPlan, current: Mapping[str, Pod]) -> None:
    models = {
        name: ModelStatus(replicas=m.num_replica, ready=0) for name, m in job.spec.models.items()
    }
    ready = 0
    for worker in plan.workers:
        pod = current.get(pod_name(job.name, worker, generation=status.restart_generation))
        if pod is None or not _ready(pod):
            continue
        ready += 1
        for model in worker.models:
            models[model].ready += 1
    status.models = models
    status.replicas = plan.world_size
    status.ready_replicas = ready


def _finish(
    status: RLHFJobStatus,
    *,
    succeeded: bool,
    reason: str,
    message: str,
    now: str,
) -> Event:
    status.phase = "Succeeded" if succeeded else "Failed"
    status.completion_time = now
    status.next_restart_time = None
    status.message = message
    _set_condition(status, status.phase, True, reason=reason, message=message, now=now)
    others: tuple[ConditionType, ...] = ("Running", "Restarting")
    for other in others:
        _set_condition(status, other, False, reason=reason, message=message, now=now)
    return Event("Normal" if succeeded else "Warning", reason, message)


def invalid_spec(job_status: RLHFJobStatus | None, message: str, *, now: dt.datetime) -> Decision:
    """A spec the API server let through but pydantic or the planner refuses: Failed."""
    status = (job_status or RLHFJobStatus()).model_copy(deep=True)
    if status.phase in _FINAL:
        return Decision(status=status)
    event = _finish(
        status, succeeded=False, reason="InvalidSpec", message=message, now=format_time(now)
    )
    return Decision(status=status, events=(event,))


def decide(
    job: RLHFJob,
    plan: JobPlan,
    pods: Sequence[Pod],
    *,
    now: dt.datetime,
    backoff: Backoff,
) -> Decision:
    """What to do next for ``job``, given every pod labelled as its own."""
    status = (job.status or RLHFJobStatus()).model_copy(deep=True)
    stamp = format_time(now)
    policy = job.spec.run_policy
    status.observed_generation = job.metadata.generation
    status.num_episode = job.spec.runtime.num_episode
    events: list[Event] = []
    gen = status.restart_generation
    current = {p["metadata"]["name"]: p for p in pods if _generation(p) == gen}
    stale = [p for p in pods if _generation(p) != gen]
    driver_name = pod_name(job.name, plan.driver, generation=gen)

    # Finished: clean up running pods, then wait for the TTL.
    if status.phase in _FINAL:
        done = parse_time(status.completion_time) or now
        ttl = policy.ttl_seconds_after_finished
        if ttl is not None:
            left = (done - now).total_seconds() + ttl
            if left <= 0:
                return Decision(status=status, delete=_active(pods), delete_job=True)
            return Decision(status=status, delete=_active(pods), requeue_after=left)
        return Decision(status=status, delete=_active(pods))

    if policy.suspend:
        if status.phase != "Suspended":
            msg = "runPolicy.suspend is true: pods deleted, status kept"
            status.phase = "Suspended"
            _set_condition(status, "Suspended", True, reason="Suspended", message=msg, now=stamp)
            _set_condition(status, "Running", False, reason="Suspended", message=msg, now=stamp)
            events.append(Event("Normal", "Suspended", msg))
        status.next_restart_time = None
        _counts(status, job, plan, {})
        return Decision(status=status, events=tuple(events), delete=_active(pods))

    if status.phase == "Suspended":
        gen = status.restart_generation = gen + 1
        current, stale = {}, list(pods)
        driver_name = pod_name(job.name, plan.driver, generation=gen)
        status.start_time = stamp
        msg = f"runPolicy.suspend is false: re-creating the pods (generation {gen})"
        _set_condition(status, "Suspended", False, reason="Resumed", message=msg, now=stamp)
        status.phase = "Created"
        events.append(Event("Normal", "Resumed", msg))

    if status.start_time is None:
        status.start_time = stamp

    # Deadline: measured from the (last) start.
    deadline = policy.active_deadline_seconds
    started = parse_time(status.start_time) or now
    if deadline is not None and (now - started).total_seconds() >= deadline:
        msg = f"ran longer than runPolicy.activeDeadlineSeconds ({deadline}s)"
        events.append(
            _finish(status, succeeded=False, reason="DeadlineExceeded", message=msg, now=stamp)
        )
        _counts(status, job, plan, {})
        return Decision(status=status, events=tuple(events), delete=_active(pods))
    deadline_left = None if deadline is None else deadline - (now - started).total_seconds()

    # Finished pods of old generations stay (for their logs); live ones must go first.
    stale_active = _active(stale)
    stale_live = [p for p in stale if _terminating(p) or _phase(p) not in ("Succeeded", "Failed")]
    driver = current.get(driver_name)
    if driver is not None and _phase(driver) == "Succeeded":
        msg = f"driver pod {driver_name} succeeded"
        _progress(status, driver)
        _counts(status, job, plan, current)
        events.append(_finish(status, succeeded=True, reason="Succeeded", message=msg, now=stamp))
        return Decision(
            status=status,
            events=tuple(events),
            delete=tuple(sorted({*_active(pods), *stale_active})),
        )

    failed = sorted(
        (p for p in current.values() if _phase(p) == "Failed"), key=lambda p: p["metadata"]["name"]
    )
    if failed:
        pod = failed[0]
        code, why = _exit(pod)
        name = pod["metadata"]["name"]
        what = f"pod {name} failed" + (
            f" (exit code {code}: {why})" if code is not None else f" ({why})"
        )
        to_delete = tuple(sorted({*_active(current.values()), *stale_active}))
        # A pod that failed without an exit code (evicted, lost) is retryable.
        attempt = next_attempt(
            code if code is not None else EXIT_RETRYABLE,
            status.restarts,
            policy.backoff_limit,
            backoff=backoff,
        )
        if isinstance(attempt, Final):
            msg = f"{what}; {attempt.why}"
            events.append(
                _finish(status, succeeded=False, reason=attempt.reason, message=msg, now=stamp)
            )
            _counts(status, job, plan, {})
            return Decision(status=status, events=tuple(events), delete=to_delete)
        status.restarts += attempt.counted
        status.restart_generation = gen + 1
        delay = attempt.delay
        status.next_restart_time = format_time(now + dt.timedelta(seconds=delay))
        status.phase = "Restarting"
        counted = (
            f"restart {status.restarts} of {policy.backoff_limit}"
            if attempt.counted
            else "not counted"
        )
        origin = restart_origin_on_kubernetes(job, last_checkpoint=status.last_checkpoint)
        msg = f"{what}; restarting the gang {origin} in {delay:g}s ({counted})"
        status.message = msg
        _set_condition(status, "Restarting", True, reason="PodFailed", message=msg, now=stamp)
        _set_condition(status, "Running", False, reason="PodFailed", message=msg, now=stamp)
        events.append(Event("Warning", "Restarting", msg))
        _counts(status, job, plan, {})
        return Decision(status=status, events=tuple(events), delete=to_delete, requeue_after=delay)

    # Wait out the backoff, and for the previous generation to be gone.
    wake = parse_time(status.next_restart_time)
    if wake is not None and now < wake:
        _counts(status, job, plan, current)
        left = (wake - now).total_seconds()
        return Decision(
            status=status, delete=stale_active, requeue_after=_soonest(left, deadline_left)
        )
    status.next_restart_time = None
    if stale_live:
        _counts(status, job, plan, current)
        return Decision(
            status=status, delete=stale_active, requeue_after=_soonest(1.0, deadline_left)
        )

    wanted = [pod_name(job.name, w, generation=gen) for w in plan.workers]
    create = tuple(n for n in wanted if n not in current)
    _counts(status, job, plan, current)
    all_ready = not create and status.ready_replicas == plan.world_size
    if status.phase is None:
        msg = f"created {len(wanted)} pods (generation {gen})"
        _set_condition(status, "Created", True, reason="PodsCreated", message=msg, now=stamp)
        events.append(Event("Normal", "Created", msg))
        status.phase = "Created"
    elif status.phase == "Restarting":
        status.phase = "Created"
    if all_ready and status.phase != "Running":
        msg = f"all {plan.world_size} pods running (generation {gen})"
        status.phase = "Running"
        status.message = msg
        _set_condition(status, "Running", True, reason="PodsRunning", message=msg, now=stamp)
        _set_condition(status, "Restarting", False, reason="PodsRunning", message=msg, now=stamp)
        events.append(Event("Normal", "Running", msg))
    elif not all_ready and status.phase == "Running":
        # A pod went unready or vanished: not a failure (yet); a missing one is re-created.
        msg = f"{status.ready_replicas} of {plan.world_size} pods ready"
        status.phase = "Created"
        status.message = msg
        _set_condition(status, "Running", False, reason="PodsNotReady", message=msg, now=stamp)
    _progress(status, current.get(driver_name))
    return Decision(status=status, events=tuple(events), create=create, requeue_after=deadline_left)


def _soonest(a: float, b: float | None) -> float:
    return a if b is None else max(0.0, min(a, b))
