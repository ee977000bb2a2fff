"""``runPolicy.schedulingPolicy``: which scheduler places the gang, and how.

Named as Kubeflow Trainer's RunPolicy.SchedulingPolicy and KubeRay do. Every
field applies to the pods (and PodGroup) of the next restart generation; the
running gang keeps what it was created with.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from rlhfjob_operator.spec.base import KubeModel
from rlhfjob_operator.spec.env import NAME_PATTERN
from rlhfjob_operator.spec.rules import Rule

__all__ = ["PodGroupKind", "PodGroupPolicy", "SchedulingPolicy"]

PodGroupKind = Literal["volcano", "coscheduling"]

_MIN_AVAILABLE_NEEDS_GROUP = (
    "spec.runPolicy.schedulingPolicy.minAvailable is the PodGroup's minMember; "
    "set schedulingPolicy.podGroup too"
)


class PodGroupPolicy(KubeModel):
    """One PodGroup per restart generation, owned by the job, for a gang scheduler:
    ``volcano`` (scheduling.volcano.sh/v1beta1, pods annotated
    ``scheduling.k8s.io/group-name``) or ``coscheduling`` (scheduler-plugins,
    scheduling.x-k8s.io/v1alpha1, pods labelled ``scheduling.x-k8s.io/pod-group``).
    The scheduler's PodGroup CRD must be installed."""

    kind: PodGroupKind = Field(description="Which scheduler's PodGroup to create.")


class SchedulingPolicy(KubeModel):
    """The gang's scheduler. Without it the default scheduler places the pods, which
    the operator's own scheduling gate holds back until every pod of a generation
    exists."""

    scheduler_name: str | None = Field(
        None,
        min_length=1,
        max_length=253,
        pattern=NAME_PATTERN,
        description="Every pod's schedulerName (e.g. volcano).",
    )
    priority_class_name: str | None = Field(
        None,
        min_length=1,
        max_length=253,
        pattern=NAME_PATTERN,
        description="Every pod's priorityClassName unless its pod settings name one (they "
        "win); also the Volcano PodGroup's.",
    )
    min_available: int | None = Field(
        None,
        ge=1,
        description="The PodGroup's minMember; default: every pod of the gang. At most the "
        "gang's size.",
    )
    pod_group: PodGroupPolicy | None = None

    rules: ClassVar[tuple[Rule[SchedulingPolicy], ...]] = (
        Rule(
            cel="!has(self.minAvailable) || has(self.podGroup)",
            message=_MIN_AVAILABLE_NEEDS_GROUP,
            holds=lambda s: s.min_available is None or s.pod_group is not None,
            field_path=".minAvailable",
        ),
    )
