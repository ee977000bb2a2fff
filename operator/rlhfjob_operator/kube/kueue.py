"""Pure: an RLHFJob as one Kueue workload per generation (Kueue's pod-group integration).

A job labelled ``kueue.x-k8s.io/queue-name`` puts that label on every pod, with
the pod-group label naming the generation (``<job>-g<gen>``: one Kueue
Workload per generation) and the total-count annotation (the gang's size).
Kueue's webhook gates each pod (``kueue.x-k8s.io/admission``) and, once every
pod of the group exists, admits the group as one unit against its
ClusterQueue's quota, injects the flavour's node selectors into the gated pods
and lifts its gate; the operator's own gate (kube/gang.py) is lifted as
without Kueue. ``kueue.x-k8s.io/priority-class`` (a WorkloadPriorityClass) on the
job is copied too; a pod's ``priorityClassName`` is Kueue's other source of
priority.

Kueue preempts a workload by deleting its pods (condition TerminationTarget):
the operator sees a disruption (kube/decisions.py), the driver saves an
emergency checkpoint in the grace period, and the next generation's pods form
a new group that waits, gated, for Kueue to admit it again.

A generation that ends while some of its pods stay (finished pods are kept for
their logs) would hold its quota: Kueue waits for replacements of a group's
failed pods. So every pod of a queued job that is no longer of the running
generation, or whose job is over or suspended, or that the operator deletes,
is first annotated ``kueue.x-k8s.io/retriable-in-group: "false"``: Kueue then
finishes the workload once none of its pods is active, and frees the quota.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from rlhfjob_operator.kube.gang import gated
from rlhfjob_operator.kube.names import pod_group_name
from rlhfjob_operator.kube.status import Pod, pod_generation
from rlhfjob_operator.plan import JobPlan
from rlhfjob_operator.spec import RLHFJob

__all__ = [
    "ADMISSION_GATE",
    "GROUP_LABEL",
    "QUEUE_LABEL",
    "RETRIABLE_ANNOTATION",
    "TOTAL_COUNT_ANNOTATION",
    "awaiting_admission",
    "label_pod",
    "queue_name",
    "to_retire",
]

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
GROUP_LABEL = "kueue.x-k8s.io/pod-group-name"
TOTAL_COUNT_ANNOTATION = "kueue.x-k8s.io/pod-group-total-count"
RETRIABLE_ANNOTATION = "kueue.x-k8s.io/retriable-in-group"
ADMISSION_GATE = "kueue.x-k8s.io/admission"


def queue_name(job: RLHFJob) -> str | None:
    """The LocalQueue the job's label names, or None: Kueue does not manage the job."""
    return job.metadata.labels.get(QUEUE_LABEL) or None


def label_pod(job: RLHFJob, plan: JobPlan, meta: dict[str, Any], *, generation: int) -> None:
    """Make the pod (its ``meta``, in place) a member of the generation's Kueue pod group;
    nothing for a job without a queue. Written over any of the user's pod labels."""
    queue = queue_name(job)
    if queue is None:
        return
    meta["labels"][QUEUE_LABEL] = queue
    meta["labels"][GROUP_LABEL] = pod_group_name(job.name, generation=generation)
    priority = job.metadata.labels.get(PRIORITY_LABEL)
    if priority:
        meta["labels"][PRIORITY_LABEL] = priority
    meta["annotations"][TOTAL_COUNT_ANNOTATION] = str(plan.world_size)


def awaiting_admission(pods: Iterable[Pod]) -> bool:
    """Whether any of ``pods`` still carries Kueue's admission gate."""
    return any(gated(pod, ADMISSION_GATE) for pod in pods)


def to_retire(
    pods: Sequence[Pod], *, generation: int, over: bool, delete: Iterable[str]
) -> tuple[str, ...]:
    """The pods of Kueue groups to annotate unretriable (sorted names): those not of
    ``generation``, all of them when the job is ``over`` (final or suspended), and
    those in ``delete``; a pod already annotated, or in no group, is left alone."""
    deleting = set(delete)
    names = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        if GROUP_LABEL not in (meta.get("labels") or {}):
            continue
        if (meta.get("annotations") or {}).get(RETRIABLE_ANNOTATION) == "false":
            continue
        if over or pod_generation(pod) != generation or meta["name"] in deleting:
            names.append(meta["name"])
    return tuple(sorted(names))
