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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from rlhfjob_operator.contract import EXIT_RETRYABLE, Backoff, Final, next_attempt
from rlhfjob_operator.kube.names import pod_name
from rlhfjob_operator.kube.status import (
    Pod,
    active_names,
    failed_exit,
    format_time,
    parse_time,
    pod_generation,
    pod_phase,
    record_counts,
    record_progress,
    set_condition,
    terminating,
)
from rlhfjob_operator.plan import JobPlan
from rlhfjob_operator.restarts import restart_origin_on_kubernetes
from rlhfjob_operator.spec import ConditionType, RLHFJob, RLHFJobStatus

__all__ = [
    "Backoff",
    "Decision",
    "Event",
    "decide",
    "format_time",
    "invalid_spec",
    "parse_time",
]

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
    set_condition(status, status.phase, True, reason=reason, message=message, now=now)
    others: tuple[ConditionType, ...] = ("Running", "Restarting")
    for other in others:
        set_condition(status, other, False, reason=reason, message=message, now=now)
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


@dataclass
class _Turn:
    """One call of :func:`decide`: what it was given, and the status (a copy) and
    Events the phases have worked out so far."""

    job: RLHFJob
    plan: JobPlan
    pods: Sequence[Pod]
    now: dt.datetime
    backoff: Backoff
    status: RLHFJobStatus
    current: dict[str, Pod]  # pods of this generation, by name
    stale: list[Pod]  # pods of other generations (or none: unlabelled)
    events: list[Event] = field(default_factory=list)

    @property
    def stamp(self) -> str:
        return format_time(self.now)

    @property
    def gen(self) -> int:
        return self.status.restart_generation

    @property
    def driver_name(self) -> str:
        return pod_name(self.job.name, self.plan.driver, generation=self.gen)

    @property
    def deadline_left(self) -> float | None:
        """Seconds to ``activeDeadlineSeconds`` from the (last) start; None: no deadline."""
        deadline = self.job.spec.run_policy.active_deadline_seconds
        if deadline is None:
            return None
        started = parse_time(self.status.start_time) or self.now
        return deadline - (self.now - started).total_seconds()

    def counts(self, current: Mapping[str, Pod]) -> None:
        record_counts(self.status, self.job, self.plan, current)

    def finish(self, *, succeeded: bool, reason: str, message: str) -> None:
        event = _finish(
            self.status, succeeded=succeeded, reason=reason, message=message, now=self.stamp
        )
        self.events.append(event)

    def decision(self, **changes: Any) -> Decision:
        return Decision(status=self.status, events=tuple(self.events), **changes)


def decide(
    job: RLHFJob,
    plan: JobPlan,
    pods: Sequence[Pod],
    *,
    now: dt.datetime,
    backoff: Backoff,
) -> Decision:
    """What to do next for ``job``, given every pod labelled as its own: the phases of
    :data:`_PHASES` are tried in order, the first that decides answers; a job none of
    them stops runs its gang (:func:`_run_gang`)."""
    status = (job.status or RLHFJobStatus()).model_copy(deep=True)
    status.observed_generation = job.metadata.generation
    status.num_episode = job.spec.runtime.num_episode
    gen = status.restart_generation
    turn = _Turn(
        job=job,
        plan=plan,
        pods=pods,
        now=now,
        backoff=backoff,
        status=status,
        current={p["metadata"]["name"]: p for p in pods if pod_generation(p) == gen},
        stale=[p for p in pods if pod_generation(p) != gen],
    )
    for phase in _PHASES:
        decision = phase(turn)
        if decision is not None:
            return decision
    return _run_gang(turn)


def _finished(turn: _Turn) -> Decision | None:
    """Succeeded or Failed: delete the pods still running, then wait for the TTL."""
    status = turn.status
    if status.phase not in _FINAL:
        return None
    delete = active_names(turn.pods)
    ttl = turn.job.spec.run_policy.ttl_seconds_after_finished
    if ttl is None:
        return Decision(status=status, delete=delete)
    done = parse_time(status.completion_time) or turn.now
    left = (done - turn.now).total_seconds() + ttl
    if left <= 0:
        return Decision(status=status, delete=delete, delete_job=True)
    return Decision(status=status, delete=delete, requeue_after=left)


def _suspended(turn: _Turn) -> Decision | None:
    """``runPolicy.suspend``: the pods go, the status stays (phase Suspended)."""
    status, stamp = turn.status, turn.stamp
    if not turn.job.spec.run_policy.suspend:
        return None
    if status.phase != "Suspended":
        msg = "runPolicy.suspend is true: pods deleted, status kept"
        status.phase = "Suspended"
        set_condition(status, "Suspended", True, reason="Suspended", message=msg, now=stamp)
        set_condition(status, "Running", False, reason="Suspended", message=msg, now=stamp)
        turn.events.append(Event("Normal", "Suspended", msg))
    status.next_restart_time = None
    turn.counts({})
    return turn.decision(delete=active_names(turn.pods))


def _started(turn: _Turn) -> None:
    """Never decides: a suspended job resumed starts a new generation (every pod it
    sees is stale) and its deadline clock again; a new job's clock starts now."""
    status, stamp = turn.status, turn.stamp
    if status.phase == "Suspended":
        status.restart_generation += 1
        turn.current, turn.stale = {}, list(turn.pods)
        status.start_time = stamp
        msg = f"runPolicy.suspend is false: re-creating the pods (generation {turn.gen})"
        set_condition(status, "Suspended", False, reason="Resumed", message=msg, now=stamp)
        status.phase = "Created"
        turn.events.append(Event("Normal", "Resumed", msg))
    if status.start_time is None:
        status.start_time = stamp


def _past_deadline(turn: _Turn) -> Decision | None:
    """``activeDeadlineSeconds`` since the (last) start have passed: Failed."""
    left = turn.deadline_left
    if left is None or left > 0:
        return None
    deadline = turn.job.spec.run_policy.active_deadline_seconds
    msg = f"ran longer than runPolicy.activeDeadlineSeconds ({deadline}s)"
    turn.finish(succeeded=False, reason="DeadlineExceeded", message=msg)
    turn.counts({})
    return turn.decision(delete=active_names(turn.pods))


def _driver_succeeded(turn: _Turn) -> Decision | None:
    """The driver pod of this generation succeeded: the job did; every pod goes."""
    name = turn.driver_name
    driver = turn.current.get(name)
    if driver is None or pod_phase(driver) != "Succeeded":
        return None
    record_progress(turn.status, driver)
    turn.counts(turn.current)
    turn.finish(succeeded=True, reason="Succeeded", message=f"driver pod {name} succeeded")
    return turn.decision(
        delete=tuple(sorted({*active_names(turn.pods), *active_names(turn.stale)}))
    )


def _pod_failed(turn: _Turn) -> Decision | None:
    """A pod of this generation failed (the first by name speaks): the gang goes, and
    :func:`~rlhfjob_operator.contract.next_attempt` says Failed or when to restart."""
    failed = sorted(
        (p for p in turn.current.values() if pod_phase(p) == "Failed"),
        key=lambda p: p["metadata"]["name"],
    )
    if not failed:
        return None
    status, stamp, policy = turn.status, turn.stamp, turn.job.spec.run_policy
    pod = failed[0]
    code, why = failed_exit(pod)
    name = pod["metadata"]["name"]
    what = f"pod {name} failed" + (
        f" (exit code {code}: {why})" if code is not None else f" ({why})"
    )
    to_delete = tuple(sorted({*active_names(turn.current.values()), *active_names(turn.stale)}))
    # A pod that failed without an exit code (evicted, lost) is retryable.
    attempt = next_attempt(
        code if code is not None else EXIT_RETRYABLE,
        status.restarts,
        policy.backoff_limit,
        backoff=turn.backoff,
    )
    if isinstance(attempt, Final):
        turn.finish(succeeded=False, reason=attempt.reason, message=f"{what}; {attempt.why}")
        turn.counts({})
        return turn.decision(delete=to_delete)
    status.restarts += attempt.counted
    status.restart_generation += 1
    delay = attempt.delay
    status.next_restart_time = format_time(turn.now + dt.timedelta(seconds=delay))
    status.phase = "Restarting"
    counted = (
        f"restart {status.restarts} of {policy.backoff_limit}" if attempt.counted else "not counted"
    )
    origin = restart_origin_on_kubernetes(turn.job, last_checkpoint=status.last_checkpoint)
    msg = f"{what}; restarting the gang {origin} in {delay:g}s ({counted})"
    status.message = msg
    set_condition(status, "Restarting", True, reason="PodFailed", message=msg, now=stamp)
    set_condition(status, "Running", False, reason="PodFailed", message=msg, now=stamp)
    turn.events.append(Event("Warning", "Restarting", msg))
    turn.counts({})
    return turn.decision(delete=to_delete, requeue_after=delay)


def _waiting(turn: _Turn) -> Decision | None:
    """Wait out the backoff (then clear it), and for the live pods of older generations
    to be gone (the new driver reuses the old one's DNS name). Finished pods of old
    generations stay, for their logs."""
    status = turn.status
    stale_active = active_names(turn.stale)
    wake = parse_time(status.next_restart_time)
    if wake is not None and turn.now < wake:
        turn.counts(turn.current)
        left = (wake - turn.now).total_seconds()
        return Decision(
            status=status, delete=stale_active, requeue_after=_soonest(left, turn.deadline_left)
        )
    status.next_restart_time = None
    stale_live = [
        p for p in turn.stale if terminating(p) or pod_phase(p) not in ("Succeeded", "Failed")
    ]
    if not stale_live:
        return None
    turn.counts(turn.current)
    return Decision(
        status=status, delete=stale_active, requeue_after=_soonest(1.0, turn.deadline_left)
    )


def _run_gang(turn: _Turn) -> Decision:
    """Create the missing pods of this generation; Created, Running when every pod
    runs and is ready, back to Created when one goes unready or vanishes."""
    status, stamp, plan, gen = turn.status, turn.stamp, turn.plan, turn.gen
    wanted = [pod_name(turn.job.name, w, generation=gen) for w in plan.workers]
    create = tuple(n for n in wanted if n not in turn.current)
    turn.counts(turn.current)
    all_ready = not create and status.ready_replicas == plan.world_size
    if status.phase is None:
        msg = f"created {len(wanted)} pods (generation {gen})"
        set_condition(status, "Created", True, reason="PodsCreated", message=msg, now=stamp)
        turn.events.append(Event("Normal", "Created", msg))
        status.phase = "Created"
    elif status.phase == "Restarting":
        status.phase = "Created"
    if all_ready and status.phase != "Running":
        msg = f"all {plan.world_size} pods running (generation {gen})"
        status.phase = "Running"
        status.message = msg
        set_condition(status, "Running", True, reason="PodsRunning", message=msg, now=stamp)
        set_condition(status, "Restarting", False, reason="PodsRunning", message=msg, now=stamp)
        turn.events.append(Event("Normal", "Running", msg))
    elif not all_ready and status.phase == "Running":
        # A pod went unready or vanished: not a failure (yet); a missing one is re-created.
        msg = f"{status.ready_replicas} of {plan.world_size} pods ready"
        status.phase = "Created"
        status.message = msg
        set_condition(status, "Running", False, reason="PodsNotReady", message=msg, now=stamp)
    record_progress(status, turn.current.get(turn.driver_name))
    return turn.decision(create=create, requeue_after=turn.deadline_left)


# Tried in this order; each returns a Decision when it decides, else None.
_PHASES: tuple[Callable[[_Turn], Decision | None], ...] = (
    _finished,
    _suspended,
    _started,
    _past_deadline,
    _driver_succeeded,
    _pod_failed,
    _waiting,
)


def _soonest(a: float, b: float | None) -> float:
    return a if b is None else max(0.0, min(a, b))
