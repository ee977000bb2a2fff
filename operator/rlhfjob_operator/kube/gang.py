"""Pure: how a gang reaches the scheduler as one unit.

Every pod is created with the scheduling gate :data:`~.names.SCHEDULING_GATE`,
so no scheduler considers a pod of a generation while another one of it is
still missing (a quota refusing it, a wide gang created in batches, an
operator restart half-way): a partial gang never holds nodes or GPUs that
another job's complete gang could use. :func:`~.decisions.decide` lifts the
gate of every pod of the generation once all of them exist. Kubernetes lets a
gate be removed from a live pod, never added, so the gate is written at
creation only.

``runPolicy.schedulingPolicy`` names the scheduler (``schedulerName``), the
priority (``priorityClassName``, unless the pod settings name one) and
optionally a PodGroup per generation for a gang scheduler, which then places
the gang all or nothing (``minMember`` = ``minAvailable``, default the gang's
size). The gate stays in use with a PodGroup: it costs one patch per pod, and
the gang scheduler then never sees part of a generation (one that does would
hold or retry the part it sees, and with ``minAvailable`` under the gang's
size might place it).

The default scheduler places each pod on its own: once a gang's gate is lifted
it may bind some pods of a gang that does not fit as a whole. All-or-nothing
placement needs a gang scheduler (a PodGroup here) or Kueue.
"""

from __future__ import annotations

from typing import Any

from rlhfjob_operator.kube.names import SCHEDULING_GATE, pod_group_name
from rlhfjob_operator.kube.status import Pod
from rlhfjob_operator.plan import JobPlan
from rlhfjob_operator.spec import PodGroupKind, RLHFJob

__all__ = [
    "POD_GROUP_ANNOTATION",
    "POD_GROUP_API",
    "POD_GROUP_LABEL",
    "check_min_available",
    "gated",
    "pod_group_spec",
    "schedule_pod",
]

# Where each gang scheduler's PodGroup lives.
POD_GROUP_API: dict[PodGroupKind, str] = {
    "volcano": "scheduling.volcano.sh/v1beta1",
    "coscheduling": "scheduling.x-k8s.io/v1alpha1",
}
# How a pod names its group: Volcano reads an annotation, coscheduling a label.
POD_GROUP_ANNOTATION = "scheduling.k8s.io/group-name"
POD_GROUP_LABEL = "scheduling.x-k8s.io/pod-group"


def gated(pod: Pod, gate: str = SCHEDULING_GATE) -> bool:
    """Whether the pod still carries ``gate``, by default the operator's (a pod without
    a spec: no)."""
    gates = (pod.get("spec") or {}).get("schedulingGates") or []
    return any(g.get("name") == gate for g in gates)


def min_member(job: RLHFJob, plan: JobPlan) -> int:
    policy = job.spec.run_policy.scheduling_policy
    wanted = policy.min_available if policy is not None else None
    return plan.world_size if wanted is None else wanted


def check_min_available(job: RLHFJob, plan: JobPlan) -> None:
    """ValueError when minAvailable exceeds the gang (the scheduler would wait forever)."""
    policy = job.spec.run_policy.scheduling_policy
    if policy is None or policy.min_available is None:
        return
    if policy.min_available > plan.world_size:
        raise ValueError(
            f"spec.runPolicy.schedulingPolicy.minAvailable is {policy.min_available} but the "
            f"gang has {plan.world_size} pods; lower it or drop it (default: the gang's size)"
        )


def schedule_pod(
    job: RLHFJob,
    pod_spec: dict[str, Any],
    meta: dict[str, Any],
    *,
    generation: int,
) -> None:
    """Gate the pod and apply ``schedulingPolicy`` to it (in place). The pod settings'
    priorityClassName, already in ``pod_spec``, wins over the policy's; the group's
    label and annotation are written over any of the user's."""
    pod_spec["schedulingGates"] = [{"name": SCHEDULING_GATE}]
    policy = job.spec.run_policy.scheduling_policy
    if policy is None:
        return
    if policy.scheduler_name is not None:
        pod_spec["schedulerName"] = policy.scheduler_name
    if policy.priority_class_name is not None:
        pod_spec.setdefault("priorityClassName", policy.priority_class_name)
    if policy.pod_group is None:
        return
    group = pod_group_name(job.name, generation=generation)
    if policy.pod_group.kind == "volcano":
        meta["annotations"][POD_GROUP_ANNOTATION] = group
    else:
        meta["labels"][POD_GROUP_LABEL] = group


def pod_group_spec(job: RLHFJob, plan: JobPlan) -> tuple[str, dict[str, Any]] | None:
    """The apiVersion and spec of the generation's PodGroup, or None without one."""
    policy = job.spec.run_policy.scheduling_policy
    if policy is None or policy.pod_group is None:
        return None
    kind = policy.pod_group.kind
    spec: dict[str, Any] = {"minMember": min_member(job, plan)}
    if kind == "volcano" and policy.priority_class_name is not None:
        spec["priorityClassName"] = policy.priority_class_name
    return POD_GROUP_API[kind], spec
