"""A job's status as :func:`~.decisions.decide` writes it: conditions (Kubernetes
semantics), times, and what it reads off the pods (phase, generation, readiness,
why one failed or is being taken away, the driver's progress, the ready counts).

Pods are the plain dicts the API returns (``metadata``, ``status``); a field
missing reads as the API's default (phase Pending, no conditions: ready once
Running, no exit code: the status reason, else "Failed").
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

from rlhfjob_operator import progress
from rlhfjob_operator.kube.names import (
    ANNOTATION_EPISODE,
    ANNOTATION_LAST_CHECKPOINT,
    LABEL_GENERATION,
    pod_name,
)
from rlhfjob_operator.plan import JobPlan
from rlhfjob_operator.spec import (
    KIND,
    Condition,
    ConditionType,
    JobProgress,
    ModelStatus,
    RLHFJob,
    RLHFJobStatus,
)

Pod = Mapping[str, Any]


def format_time(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(s: str | None) -> dt.datetime | None:
    if not s:
        return None
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00"))


def set_condition(
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


def pod_phase(pod: Pod) -> str:
    return str((pod.get("status") or {}).get("phase") or "Pending")


def terminating(pod: Pod) -> bool:
    return bool(pod["metadata"].get("deletionTimestamp"))


def not_running(pod: Pod | None) -> str:
    """Why a pod of a gang that should be starting is not running yet, in a phrase: a
    container's waiting reason (ImagePullBackOff, CreateContainerConfigError...), the
    scheduler's (Unschedulable, with its message), scheduling gates, or its phase."""
    if pod is None:
        return "not created"
    status = pod.get("status") or {}
    for cs in [
        *(status.get("initContainerStatuses") or []),
        *(status.get("containerStatuses") or []),
    ]:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") and waiting["reason"] != "ContainerCreating":
            tail = f": {waiting['message']}" if waiting.get("message") else ""
            return f"container {cs.get('name')} waiting: {waiting['reason']}{tail}"
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            tail = f": {cond['message']}" if cond.get("message") else ""
            return f"{cond.get('reason') or 'not scheduled'}{tail}"
    gates = [g.get("name") for g in (pod.get("spec") or {}).get("schedulingGates") or []]
    if gates:
        return f"held by scheduling gates {', '.join(map(str, gates))}"
    return f"phase {pod_phase(pod)}, not ready"


# A pod still there this long after its deletionTimestamp (the end of its grace period)
# has a kubelet that is not confirming the deletion: a lost or wedged node.
OVERDUE_SECONDS = 120.0


def given_up(pod: Pod, *, now: dt.datetime, lost_nodes: frozenset[str]) -> str | None:
    """Why a pod of an earlier generation that has not stopped need not be waited for
    any longer, or None. Only a pod being deleted qualifies, once its node is not Ready
    (in ``lost_nodes``: NotReady, Unknown or gone; its kubelet will never confirm the
    deletion, so it would stay Terminating until someone force-deletes it) or once it
    is :data:`OVERDUE_SECONDS` past its grace period. A pod on a partitioned node may
    still be running: its generation's peers are gone, and its rendezvous name is not
    the new generation's (kube/names.py), so it cannot join the new gang."""
    if not terminating(pod):
        return None
    node = (pod.get("spec") or {}).get("nodeName")
    if node and node in lost_nodes:
        return f"its node {node} is not Ready"
    deadline = parse_time(pod["metadata"]["deletionTimestamp"])
    if deadline is not None and (now - deadline).total_seconds() >= OVERDUE_SECONDS:
        return f"{(now - deadline).total_seconds():.0f} s past its grace period"
    return None


def disruption(pod: Pod) -> str | None:
    """Why the pod is being taken away from outside the operator, or None.

    The ``DisruptionTarget`` condition (True) that the API server, scheduler or kubelet
    sets on a pod it is about to stop (an eviction, a preemption, a taint, node
    pressure) gives its reason and message; a pod being deleted without one (``kubectl
    delete``, a drain by hand) reads "being deleted". Only meaningful for pods of the
    current generation: the operator deletes a generation's pods only once it has
    moved past it.
    """
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "DisruptionTarget" and cond.get("status") == "True":
            why = str(cond.get("reason") or "DisruptionTarget")
            return f"{why}: {cond['message']}" if cond.get("message") else why
    return "being deleted" if terminating(pod) else None


def of_another_job(obj: Pod, uid: str | None) -> bool:
    """Whether ``obj`` is controlled by an RLHFJob whose uid is not ``uid``: a job of
    the same name deleted and applied again leaves the old one's pods, ConfigMap and
    Secret to the garbage collector for a while, under the same names and labels.
    They are never the new job's (not its success, its failures, its spec). An
    object without such an owner (or a ``uid`` of None) is not told apart here."""
    owners = obj.get("metadata", {}).get("ownerReferences") or []
    return bool(uid) and any(
        o.get("kind") == KIND and o.get("controller") and o.get("uid") != uid for o in owners
    )


def pod_generation(pod: Pod) -> int | None:
    raw = (pod["metadata"].get("labels") or {}).get(LABEL_GENERATION)
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


def is_ready(pod: Pod) -> bool:
    if pod_phase(pod) != "Running" or terminating(pod):
        return False
    conds = (pod.get("status") or {}).get("conditions") or []
    ready = [c for c in conds if c.get("type") == "Ready"]
    return not ready or ready[0].get("status") == "True"


def failed_exit(pod: Pod) -> tuple[int | None, str]:
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


def active_names(pods: Iterable[Pod]) -> tuple[str, ...]:
    """Pods worth deleting: not already going, not finished (their logs stay readable)."""
    return tuple(
        sorted(
            p["metadata"]["name"]
            for p in pods
            if not terminating(p) and pod_phase(p) not in ("Succeeded", "Failed")
        )
    )


def record_progress(
    status: RLHFJobStatus, driver: Pod | None, live: progress.Live | None = None
) -> None:
    """Episode and reward from the driver: what the operator just read from its metrics
    (``live``: also ``status.progress``), its pod's annotations, or the termination
    message it ended with (``rlhfjob_operator.progress``), which wins; a job that ended
    keeps its last ``progress`` but no ETA."""
    if live is not None:
        status.progress = JobProgress.model_validate(
            {
                "episode": live.episode,
                "numEpisode": live.num_episode,
                "reward": live.reward,
                "samplesPerSecond": live.samples_per_second,
                "lastCheckpointEpisode": live.last_checkpoint_episode,
                "eta": None if live.eta is None else format_time(live.eta),
                "observedAt": format_time(live.observed_at),
            }
        )
        status.episode = live.episode
        if live.reward is not None:
            status.reward = live.reward
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
            if status.progress is not None:
                status.progress.eta = None


def record_counts(
    status: RLHFJobStatus, job: RLHFJob, plan: JobPlan, current: Mapping[str, Pod]
) -> None:
    models = {
        name: ModelStatus(replicas=m.num_replica, ready=0) for name, m in job.spec.models.items()
    }
    ready = 0
    for worker in plan.workers:
        pod = current.get(pod_name(job.name, worker, generation=status.restart_generation))
        if pod is None or not is_ready(pod):
            continue
        ready += 1
        for model in worker.models:
            models[model].ready += 1
    status.models = models
    status.replicas = plan.world_size
    status.ready_replicas = ready
