"""``status`` of an RLHFJob: written by the operator only (the status subresource).

Read leniently, unlike the spec: a status written by a newer or an older operator (an
upgrade, a rollback, with the CRD of either) must not fail a running job. So every
model here ignores keys it does not know, and a condition of a type this operator
does not know is dropped (the list is the operator's own to rewrite). A field it does
know with a value it cannot read still fails the job, naming the field.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import ConfigDict, Field, field_validator
from pydantic.config import JsonDict

from rlhfjob_operator.spec.base import KubeModel

__all__ = [
    "CONDITION_TYPES",
    "Condition",
    "ConditionType",
    "JobProgress",
    "ModelStatus",
    "Phase",
    "RLHFJobStatus",
]

Phase = Literal["Created", "Running", "Restarting", "Suspended", "Succeeded", "Failed"]
# Each phase's condition, and FailedCreate: the API server refused to create one of the
# job's objects (a quota, an admission policy: 403/422); the operator retries with backoff.
ConditionType = Literal[
    "Created", "Running", "Restarting", "Suspended", "Succeeded", "Failed", "FailedCreate"
]
CONDITION_TYPES: tuple[Phase, ...] = (  # the phases, as metrics count jobs
    "Created",
    "Running",
    "Restarting",
    "Suspended",
    "Succeeded",
    "Failed",
)
_TIME: JsonDict = {"format": "date-time"}


class _StatusModel(KubeModel):
    """Keys another operator version wrote, and this one does not know, are ignored."""

    model_config = ConfigDict(extra="ignore")


class Condition(_StatusModel):
    """A Kubernetes-style condition; ``status`` is "True", "False" or "Unknown"."""

    type: ConditionType
    status: Literal["True", "False", "Unknown"]
    reason: str = Field("", max_length=1024)
    message: str = Field("", max_length=32768)
    last_transition_time: str | None = Field(None, json_schema_extra=_TIME)
    last_update_time: str | None = Field(None, json_schema_extra=_TIME)


class ModelStatus(_StatusModel):
    replicas: int = Field(0, ge=0, description="Pods wanted for this model.")
    ready: int = Field(0, ge=0, description="Of those, Running and ready.")


class JobProgress(_StatusModel):
    """The driver's progress while it runs, read from its metrics endpoint by the
    operator at a bounded rate (``rlhfjob_operator.progress.from_metrics``)."""

    episode: int = Field(ge=0, description="Episodes completed.")
    num_episode: int | None = Field(None, ge=0, description="Episodes the job runs in all.")
    reward: float | None = Field(None, description="Mean reward of the last episode.")
    samples_per_second: float | None = Field(None, ge=0, description="In the last episode.")
    last_checkpoint_episode: int | None = Field(
        None, ge=0, description="Episode of the newest checkpoint, saved or resumed from."
    )
    eta: str | None = Field(
        None,
        description="Estimated finish: the episodes left times the last episode's duration.",
        json_schema_extra=_TIME,
    )
    observed_at: str = Field(description="When the operator read it.", json_schema_extra=_TIME)


class RLHFJobStatus(_StatusModel):
    """Written by the operator only (the status subresource)."""

    phase: Phase | None = None
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    )
    models: dict[str, ModelStatus] = Field(default_factory=dict)
    replicas: int = Field(0, ge=0, description="Pods of the job, driver included.")
    ready_replicas: int = Field(0, ge=0)
    episode: int | None = Field(None, ge=0, description="Episodes completed, as the driver says.")
    reward: float | None = Field(
        None, description="Mean reward of the driver's last episode (its reward_mean metric)."
    )
    num_episode: int | None = Field(None, ge=0)
    last_checkpoint: str | None = Field(None, description="Path or episode of the last checkpoint.")
    restarts: int = Field(
        0, ge=0, description="Gang restarts after a failure (counted against backoffLimit)."
    )
    disruptions: int = Field(
        0,
        ge=0,
        description="Gang restarts after a disruption (eviction, preemption, drain, exit 79): "
        "not counted against backoffLimit.",
    )
    restart_generation: int = Field(
        0, ge=0, description="Incremented whenever the gang is re-created (restart, resume)."
    )
    start_time: str | None = Field(None, json_schema_extra=_TIME)
    completion_time: str | None = Field(None, json_schema_extra=_TIME)
    next_restart_time: str | None = Field(None, json_schema_extra=_TIME)
    startup_deadline: str | None = Field(
        None,
        description="When this generation must be Running by (runPolicy.startupTimeoutSeconds); "
        "unset once it is.",
        json_schema_extra=_TIME,
    )
    observed_generation: int | None = None
    message: str | None = None
    progress: JobProgress | None = None

    @field_validator("conditions", mode="before")
    @classmethod
    def _known_conditions(cls, value: Any) -> Any:
        known = get_args(ConditionType)
        if not isinstance(value, list):
            return value
        return [c for c in value if not isinstance(c, dict) or c.get("type") in known]

    def condition(self, type_: ConditionType) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)
