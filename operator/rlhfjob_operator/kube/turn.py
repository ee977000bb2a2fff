"""Pure: one call of :func:`~.decisions.decide`, what it was given and what it worked out
so far (:class:`Turn`), and what it answers (:class:`Decision`, with its :class:`Event`\\ s).

The phases of :mod:`~.decisions` each take the Turn; the one that decides returns
``turn.decision(...)``. Nothing here talks to the API server.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from rlhfjob_operator import progress
from rlhfjob_operator.contract import Backoff
from rlhfjob_operator.kube.names import pod_name
from rlhfjob_operator.kube.status import Pod, format_time, parse_time, record_counts, set_condition
from rlhfjob_operator.plan import JobPlan
from rlhfjob_operator.spec import ConditionType, RLHFJob, RLHFJobStatus

__all__ = ["FINAL", "Decision", "Event", "Turn", "finish", "invalid_spec", "soonest"]

FINAL = ("Succeeded", "Failed")


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
    ungate: tuple[str, ...] = ()  # names of pods (current generation) whose gate to lift
    retire: tuple[str, ...] = ()  # names of pods to mark unretriable for Kueue, first
    delete_job: bool = False  # the TTL after finishing has passed
    requeue_after: float | None = None  # look again then, even if nothing changes


def finish(
    status: RLHFJobStatus,
    *,
    succeeded: bool,
    reason: str,
    message: str,
    now: str,
) -> Event:
    """Make ``status`` final (Succeeded or Failed) and say so in an Event."""
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
    """A spec the API server let through but pydantic or the planner refuses: Failed
    (once: a job already final keeps its status)."""
    status = (job_status or RLHFJobStatus()).model_copy(deep=True)
    if status.phase in FINAL:
        return Decision(status=status)
    event = finish(
        status, succeeded=False, reason="InvalidSpec", message=message, now=format_time(now)
    )
    return Decision(status=status, events=(event,))


@dataclass
class Turn:
    """One call of :func:`~.decisions.decide`: what it was given, and the status (a copy)
    and Events the phases have worked out so far."""

    job: RLHFJob
    plan: JobPlan
    pods: Sequence[Pod]
    now: dt.datetime
    backoff: Backoff
    status: RLHFJobStatus
    current: dict[str, Pod]  # pods of this generation, by name
    stale: list[Pod]  # pods of other generations (or none: unlabelled)
    live: progress.Live | None = None  # the running driver's metrics, when just read
    lost_nodes: frozenset[str] = frozenset()  # not Ready, of those with old pods terminating
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
    def wanted(self) -> list[str]:
        """The names of this generation's pods, driver first."""
        return [pod_name(self.job.name, w, generation=self.gen) for w in self.plan.workers]

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
        event = finish(
            self.status, succeeded=succeeded, reason=reason, message=message, now=self.stamp
        )
        self.events.append(event)

    def decision(self, **changes: Any) -> Decision:
        return Decision(status=self.status, events=tuple(self.events), **changes)


def soonest(a: float, b: float | None) -> float:
    """``a``, or the deadline ``b`` when it comes first (never below 0)."""
    return a if b is None else max(0.0, min(a, b))
