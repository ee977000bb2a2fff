"""Pure: (job, its observed pods, now) -> the new status, the Events, what to create/delete.

The kopf handlers read the job and its pods, call :func:`decide`, write the
status (first: so that a crash after it never loses a decision), then apply
the pod changes and post the Events. Re-running :func:`decide` on the same
observations gives the same answer, so an operator killed at any point resumes
without duplicating pods.

The gang's life: pods of generation ``status.restartGeneration`` are created
(create-if-absent, gated: kube/gang.py; a pod that vanishes before the gang was
first Running is re-created under the same name), and once every one of them
exists their scheduling gates are lifted (those still gated, so a turn that
lifted some before a crash is finished by the next). When every pod runs and is ready the job is
Running. The driver pod succeeding makes the job Succeeded (the other pods are
then deleted).

A disruption ends the generation without counting against the backoff limit:
a pod of it with the ``DisruptionTarget`` condition (an eviction, a preemption,
a drain), being deleted by anyone but the operator, or gone once the gang was
Running (a force deletion the operator did not see happen). The rest of the
gang is deleted at once: every process takes the SIGTERM, the driver saves an
emergency checkpoint at the end of the episode (``rlhfjob.comm.stopping``), and
the next generation starts as soon as the old pods are gone and resumes from
it. A disruption seen together with a failed pod wins: the failure is most
likely its consequence (peers of a pod killed at the end of its grace period).
A disruption during the last episode lets the old driver finish; the new
generation then resumes from the final checkpoint and ends at once.

Any pod of the gang failing deletes the whole gang; after a backoff of
``base * 2**(restarts-1)`` seconds (capped), the next generation is created,
until ``runPolicy.backoffLimit`` restarts are spent: then Failed. The root cause
speaks for a generation where several failed (kube/rootcause.py: any exit
:data:`~rlhfjob_operator.contract.EXIT_PERMANENT` fails the job at once, else the
earliest-finished failure that is not a 75); an exit
:data:`~rlhfjob_operator.contract.EXIT_DISRUPTED` (the driver's, after an emergency
checkpoint) restarts it at once uncounted. These are the defaults of
``runPolicy.failurePolicy`` (spec/failure.py), whose rules are tried first on the
pod that speaks, failed or disrupted.
Counted restarts are ``status.restarts``, uncounted ones ``status.disruptions``. A new
generation is only created once every pod of older ones is gone (an old driver may
still be writing its emergency checkpoint), or given up on (:func:`~.status.given_up`:
its node is not Ready, or it is long past its grace period); the Restarting
condition names the pods waited for meanwhile. Each generation has DNS names of its
own (kube/names.py), so a pod left Terminating on a lost node never answers for the
new driver. A job with a Kueue queue waits, gated, for
Kueue's admission of each generation (kube/kueue.py); the pods of a generation it
leaves are marked so Kueue frees their quota. ``suspend`` deletes the pods and keeps
the status; resuming starts a new generation and restarts the
``activeDeadlineSeconds`` clock. Succeeded and Failed are final; the TTL then
deletes the job.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Sequence

from rlhfjob_operator import progress
from rlhfjob_operator.contract import Backoff, Final, Retry, abort_hint
from rlhfjob_operator.kube.gang import gated
from rlhfjob_operator.kube.kueue import awaiting_admission, queue_name, to_retire
from rlhfjob_operator.kube.names import LABEL_ROLE
from rlhfjob_operator.kube.rootcause import root_cause
from rlhfjob_operator.kube.status import (
    Pod,
    active_names,
    disruption,
    failed_exit,
    format_time,
    given_up,
    is_ready,
    not_running,
    of_another_job,
    parse_time,
    pod_generation,
    pod_phase,
    record_progress,
    set_condition,
    terminating,
)
from rlhfjob_operator.kube.turn import FINAL, Decision, Event, Turn, invalid_spec, soonest
from rlhfjob_operator.plan import JobPlan
from rlhfjob_operator.restarts import restart_origin_on_kubernetes
from rlhfjob_operator.spec import RLHFJob, RLHFJobStatus
from rlhfjob_operator.spec.failure import Match, attempt, first_match

__all__ = [
    "Backoff",
    "Decision",
    "Event",
    "decide",
    "format_time",
    "invalid_spec",
    "parse_time",
]


def decide(
    job: RLHFJob,
    plan: JobPlan,
    pods: Sequence[Pod],
    *,
    now: dt.datetime,
    backoff: Backoff,
    live: progress.Live | None = None,
    lost_nodes: frozenset[str] = frozenset(),
) -> Decision:
    """What to do next for ``job``, given every pod labelled as its own: the phases of
    :data:`_PHASES` are tried in order, the first that decides answers; a job none of
    them stops runs its gang (:func:`_run_gang`). Pods of an earlier job of the same
    name (:func:`~.status.of_another_job`) are not looked at. ``live`` is the running
    driver's progress as just read from its metrics, recorded while the gang runs.
    ``lost_nodes``: the nodes, of those hosting terminating pods of older generations,
    that are not Ready."""
    pods = [p for p in pods if not of_another_job(p, job.metadata.uid)]
    status = (job.status or RLHFJobStatus()).model_copy(deep=True)
    status.observed_generation = job.metadata.generation
    status.num_episode = job.spec.runtime.num_episode
    gen = status.restart_generation
    turn = Turn(
        job=job,
        plan=plan,
        pods=pods,
        now=now,
        backoff=backoff,
        status=status,
        current={p["metadata"]["name"]: p for p in pods if pod_generation(p) == gen},
        stale=[p for p in pods if pod_generation(p) != gen],
        live=live,
        lost_nodes=lost_nodes,
    )
    for phase in _PHASES:
        decision = phase(turn)
        if decision is not None:
            return _retired(decision, pods)
    return _retired(_run_gang(turn), pods)


def _retired(decision: Decision, pods: Sequence[Pod]) -> Decision:
    """``decision`` with the Kueue pod-group members to mark unretriable
    (kube/kueue.py): a generation the job left, or a job over or suspended, frees its
    quota."""
    status = decision.status
    over = status.phase in FINAL or status.phase == "Suspended"
    retire = to_retire(
        pods, generation=status.restart_generation, over=over, delete=decision.delete
    )
    return dataclasses.replace(decision, retire=retire) if retire else decision


def _finished(turn: Turn) -> Decision | None:
    """Succeeded or Failed: delete the pods still running, then wait for the TTL."""
    status = turn.status
    if status.phase not in FINAL:
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


def _suspended(turn: Turn) -> Decision | None:
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
    status.next_restart_time = status.startup_deadline = None
    turn.counts({})
    return turn.decision(delete=active_names(turn.pods))


def _started(turn: Turn) -> None:
    """Never decides: a suspended job resumed starts a new generation (every pod it
    sees is stale) and its deadline clock again; a new job's clock starts now. A job
    created suspended that never started (no start time) starts as a new job does, in
    generation 0 (its first unsuspend is no restart: Kueue's admission is one)."""
    status, stamp = turn.status, turn.stamp
    if status.phase == "Suspended":
        started = status.start_time is not None
        if started:
            status.restart_generation += 1
            turn.current, turn.stale = {}, list(turn.pods)
        status.start_time = stamp
        what = "re-creating" if started else "creating"
        msg = f"runPolicy.suspend is false: {what} the pods (generation {turn.gen})"
        set_condition(status, "Suspended", False, reason="Resumed", message=msg, now=stamp)
        status.phase = "Created" if started else None
        turn.events.append(Event("Normal", "Resumed", msg))
    if status.start_time is None:
        status.start_time = stamp


def _past_deadline(turn: Turn) -> Decision | None:
    """``activeDeadlineSeconds`` since the (last) start have passed: Failed."""
    left = turn.deadline_left
    if left is None or left > 0:
        return None
    deadline = turn.job.spec.run_policy.active_deadline_seconds
    msg = f"ran longer than runPolicy.activeDeadlineSeconds ({deadline}s)"
    turn.finish(succeeded=False, reason="DeadlineExceeded", message=msg)
    turn.counts({})
    return turn.decision(delete=active_names(turn.pods))


def _driver_succeeded(turn: Turn) -> Decision | None:
    """The driver pod of this generation succeeded: the job did; every pod goes."""
    name = turn.driver_name
    driver = turn.current.get(name)
    if driver is None or pod_phase(driver) != "Succeeded":
        return None
    record_progress(turn.status, driver)
    turn.counts(turn.current)
    turn.finish(succeeded=True, reason="Succeeded", message=f"driver pod {name} succeeded")
    return turn.decision(delete=_all_active(turn))


def _disrupted(turn: Turn) -> Decision | None:
    """A pod of this generation is being taken away (:func:`~.status.disruption`), or is
    gone once the gang was Running: the gang goes now and, unless the job's
    failurePolicy says otherwise, the next generation follows as soon as it is gone,
    uncounted (the first disrupted pod by name speaks)."""
    named = sorted(
        (name, why) for name, pod in turn.current.items() if (why := disruption(pod)) is not None
    )
    if not named and turn.status.phase == "Running":
        named = [(name, "gone") for name in turn.wanted if name not in turn.current]
    if not named:
        return None
    name, why = named[0]
    pod = turn.current.get(name)
    match = _policy(turn, pod, failed_exit(pod)[0] if pod else None)
    if match.rule is None:  # taken away with no condition or code to match: not counted
        match = dataclasses.replace(match, action="RestartNotCounting")
    return _act(turn, f"pod {name} disrupted ({why})", match)


def _pod_failed(turn: Turn) -> Decision | None:
    """A pod of this generation failed (its root cause speaks: kube/rootcause.py): the
    gang goes, and the job's failurePolicy (spec/failure.py) says Failed or when to
    restart."""
    pod = root_cause(p for p in turn.current.values() if pod_phase(p) == "Failed")
    if pod is None:
        return None
    code, why = failed_exit(pod)
    name = pod["metadata"]["name"]
    what = f"pod {name} failed" + (
        f" (exit code {code}: {why}{abort_hint(code)})" if code is not None else f" ({why})"
    )
    return _act(turn, what, _policy(turn, pod, code))


def _startup_timed_out(turn: Turn) -> Decision | None:
    """``runPolicy.startupTimeoutSeconds`` passed before this generation was Running: the
    first of its pods (by name) that is not running and ready speaks, with why
    (:func:`~.status.not_running`), and failurePolicy acts on it as on a failed pod
    without an exit code (its conditions may match a rule; by default a counted
    restart)."""
    status = turn.status
    deadline = parse_time(status.startup_deadline)
    if deadline is None or turn.now < deadline or status.phase == "Running":
        return None
    if queue_name(turn.job) is not None and awaiting_admission(turn.current.values()):
        return None  # queued: _run_gang moves the deadline
    status.startup_deadline = None
    name = next(n for n in turn.wanted if n not in turn.current or not is_ready(turn.current[n]))
    pod = turn.current.get(name)
    timeout = turn.job.spec.run_policy.startup_timeout_seconds
    what = (
        f"pod {name} not running {timeout}s after its gang was created "
        f"(runPolicy.startupTimeoutSeconds): {not_running(pod)}"
    )
    return _act(turn, what, _policy(turn, pod, None), reason="StartupTimeout")


def _policy(turn: Turn, pod: Pod | None, code: int | None) -> Match:
    """The failurePolicy's match for ``pod`` (None: gone) with exit ``code``."""
    policy = turn.job.spec.run_policy.failure_policy
    labels = (pod or {}).get("metadata", {}).get("labels") or {}
    conditions = {
        str(c.get("type")): str(c.get("status"))
        for c in ((pod or {}).get("status") or {}).get("conditions") or []
    }
    return first_match(
        policy.rule_list if policy else (),
        names=turn.plan.names_of(labels.get(LABEL_ROLE, "")),
        code=code,
        conditions=conditions,
    )


def _act(turn: Turn, what: str, match: Match, *, reason: str | None = None) -> Decision:
    """Fail the job or restart the gang, as ``match`` says; ``reason`` is the Restarting
    condition's (by default PodFailed or PodDisrupted)."""
    status, policy = turn.status, turn.job.spec.run_policy
    if match.index is not None:
        what += f"; {match.describe()}"
    next_ = attempt(
        match, restarts=status.restarts, limit=policy.backoff_limit, backoff=turn.backoff
    )
    if isinstance(next_, Final):
        turn.finish(succeeded=False, reason=next_.reason, message=f"{what}; {next_.why}")
        turn.counts({})
        return turn.decision(delete=_all_active(turn))
    return _restart(turn, what, next_, reason=reason)


def _restart(turn: Turn, what: str, retry: Retry, *, reason: str | None = None) -> Decision:
    """Delete the gang and start the next generation after ``retry.delay``; an uncounted
    retry is a disruption (Normal Event), a counted one spends a restart (Warning)."""
    status, stamp, policy = turn.status, turn.stamp, turn.job.spec.run_policy
    to_delete = _all_active(turn)
    status.restarts += retry.counted
    status.disruptions += not retry.counted
    status.restart_generation += 1
    delay = retry.delay
    status.next_restart_time = format_time(turn.now + dt.timedelta(seconds=delay))
    status.phase = "Restarting"
    if retry.counted:
        why, tail = "PodFailed", f" (restart {status.restarts} of {policy.backoff_limit})"
    else:
        why, tail = "PodDisrupted", ", disrupted (not counted)"
    reason = reason or why
    status.startup_deadline = None
    origin = restart_origin_on_kubernetes(
        turn.job, last_checkpoint=status.last_checkpoint, stopping=not retry.counted
    )
    msg = f"{what}; restarting the gang {origin} in {delay:g}s{tail}"
    status.message = msg
    set_condition(status, "Restarting", True, reason=reason, message=msg, now=stamp)
    set_condition(status, "Running", False, reason=reason, message=msg, now=stamp)
    turn.events.append(Event("Warning" if retry.counted else "Normal", "Restarting", msg))
    turn.counts({})
    return turn.decision(delete=to_delete, requeue_after=delay)


def _all_active(turn: Turn) -> tuple[str, ...]:
    """Every pod of the job still worth deleting, this generation's and older ones'."""
    return tuple(sorted({*active_names(turn.current.values()), *active_names(turn.stale)}))


def _waiting(turn: Turn) -> Decision | None:
    """Wait out the backoff (then clear it), and for the live pods of older generations
    to be gone, unless given up on (:func:`~.status.given_up`); the Restarting
    condition and the message say which are waited for. Finished pods of old
    generations stay, for their logs."""
    status = turn.status
    stale_active = active_names(turn.stale)
    wake = parse_time(status.next_restart_time)
    if wake is not None and turn.now < wake:
        turn.counts(turn.current)
        left = (wake - turn.now).total_seconds()
        return Decision(
            status=status, delete=stale_active, requeue_after=soonest(left, turn.deadline_left)
        )
    status.next_restart_time = None
    stale_live = [
        p for p in turn.stale if terminating(p) or pod_phase(p) not in ("Succeeded", "Failed")
    ]
    lost = {
        p["metadata"]["name"]: why
        for p in stale_live
        if (why := given_up(p, now=turn.now, lost_nodes=turn.lost_nodes))
    }
    waited = sorted(p["metadata"]["name"] for p in stale_live if p["metadata"]["name"] not in lost)
    if not waited:
        return None
    msg = f"waiting for {len(waited)} pods of earlier generations to stop: {', '.join(waited)}"
    if lost:
        msg += "; not waiting for " + ", ".join(f"{n} ({why})" for n, why in sorted(lost.items()))
    status.message = msg
    restarting = status.condition("Restarting")
    reason = restarting.reason if restarting is not None else "PodsTerminating"
    set_condition(status, "Restarting", True, reason=reason, message=msg, now=turn.stamp)
    turn.counts(turn.current)
    return Decision(
        status=status, delete=stale_active, requeue_after=soonest(1.0, turn.deadline_left)
    )


def _run_gang(turn: Turn) -> Decision:
    """Create the missing pods of this generation (none is missing once it was Running:
    :func:`_disrupted`), or lift the gates once none is missing; Created, Running when
    every pod runs and is ready, back to Created when one goes unready."""
    status, stamp, plan, gen = turn.status, turn.stamp, turn.plan, turn.gen
    wanted = turn.wanted
    create = tuple(n for n in wanted if n not in turn.current)
    ungate = () if create else tuple(n for n in wanted if gated(turn.current[n]))
    if not create:  # every pod exists: a refusal the reconciler recorded is over
        msg = f"all {len(wanted)} pods exist (generation {gen})"
        set_condition(status, "FailedCreate", False, reason="PodsCreated", message=msg, now=stamp)
    turn.counts(turn.current)
    all_ready = not create and status.ready_replicas == plan.world_size
    queue = queue_name(turn.job)
    queued = not create and queue is not None and awaiting_admission(turn.current.values())
    _startup_clock(turn, fresh=len(create) == len(wanted), queued=queued, running=all_ready)
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
        # A pod went unready (or ended early, as a worker may): not a failure (yet).
        msg = f"{status.ready_replicas} of {plan.world_size} pods ready"
        status.phase = "Created"
        status.message = msg
        set_condition(status, "Running", False, reason="PodsNotReady", message=msg, now=stamp)
    if queued:
        status.message = f"waiting for Kueue to admit the gang (queue {queue})"
    record_progress(status, turn.current.get(turn.driver_name), turn.live)
    startup = parse_time(status.startup_deadline)
    wake = turn.deadline_left
    if startup is not None:
        wake = soonest((startup - turn.now).total_seconds(), wake)
    return turn.decision(create=create, ungate=ungate, requeue_after=wake)


def _startup_clock(turn: Turn, *, fresh: bool, queued: bool, running: bool) -> None:
    """``status.startupDeadline``: set when a generation's pods are all created (again
    after a refused create) and while Kueue has not admitted it (queueing is not
    startup), cleared once the gang is Running (so a pod going unready later is no
    startup failure)."""
    status, timeout = turn.status, turn.job.spec.run_policy.startup_timeout_seconds
    if running or timeout is None:
        status.startup_deadline = None
    elif fresh or queued:
        status.startup_deadline = format_time(turn.now + dt.timedelta(seconds=timeout))


# Tried in this order; each returns a Decision when it decides, else None.
_PHASES: tuple[Callable[[Turn], Decision | None], ...] = (
    _finished,
    _suspended,
    _started,
    _driver_succeeded,  # before the deadline: a driver that made it in time succeeded
    _past_deadline,
    _disrupted,
    _pod_failed,
    _startup_timed_out,
    _waiting,
)
