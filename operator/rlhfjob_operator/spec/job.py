"""``spec`` of an RLHFJob and its Kubernetes-only parts: entrypoint, checkpoint volume,
run policy; the whole manifest (RLHFJob) and its metadata."""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rlhfjob_operator.contract import DRIVER_ROLE
from rlhfjob_operator.spec.base import API_VERSION, KIND, KubeModel, Quantity, check_quantity
from rlhfjob_operator.spec.env import EnvVar, reserved_env_rule
from rlhfjob_operator.spec.failure import FailurePolicy
from rlhfjob_operator.spec.pod import NodeSelector, PodSettings, Toleration
from rlhfjob_operator.spec.rules import Rule, cel_or, immutable, transition
from rlhfjob_operator.spec.runtime import (
    COLOCATED_MODELS_EXIST,
    COLOCATED_REPLICAS_MATCH,
    REPLICAS_GET_BATCHES,
    STALENESS_SYNCS_EVERY_EPISODE,
    JobConfig,
    ModelSpec,
    RuntimeSpec,
)
from rlhfjob_operator.spec.scheduling import SchedulingPolicy
from rlhfjob_operator.spec.status import RLHFJobStatus

__all__ = [
    "JOB_NAME_MAX",
    "JOB_NAME_PATTERN",
    "MODEL_NAME_PATTERN",
    "CheckpointSpec",
    "Entrypoint",
    "ObjectMeta",
    "RLHFJob",
    "RLHFJobSpec",
    "RunPolicy",
]

# Model names become pod names, hostnames and label values: DNS-safe, short.
MODEL_NAME_PATTERN = r"^[a-z0-9]([a-z0-9_-]{0,38}[a-z0-9])?$"
# metadata.name becomes the headless Service's name (a DNS-1035 label) and prefixes pod names.
JOB_NAME_PATTERN = r"^[a-z]([-a-z0-9]{0,48}[a-z0-9])?$"
JOB_NAME_MAX = 50

_ONE_ENTRYPOINT = "set exactly one of file, module or engine"
_ENGINE_NO_ARGS = (
    "engine takes no args: the ready-made engine reads only runtime and models; "
    "use file or module for a program with arguments"
)


class Entrypoint(KubeModel):
    """What the driver (rank 0) runs: a Python file or module of the image, or an engine."""

    file: str | None = Field(
        None, min_length=1, max_length=1024, description="Path of a Python file in the image."
    )
    module: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$",
        description="A module run like `python -m module`.",
    )
    engine: Literal["grpo", "ppo"] | None = Field(
        None,
        description="A ready-made engine (GRPOEngine, PPOEngine) with the examples' model "
        "names, built from runtime and models: no Python file. Prompts: runtime.data_path, "
        "else those the policy's task makes.",
    )
    args: list[Annotated[str, Field(max_length=4096)]] = Field(
        default_factory=list, max_length=256, description="sys.argv[1:] of the entrypoint."
    )

    rules: ClassVar[tuple[Rule[Entrypoint], ...]] = (
        Rule(
            cel="(has(self.file) ? 1 : 0) + (has(self.module) ? 1 : 0) "
            "+ (has(self.engine) ? 1 : 0) == 1",
            message=f"spec.entrypoint: {_ONE_ENTRYPOINT}",
            holds=lambda e: [e.file, e.module, e.engine].count(None) == 2,
            explain=lambda _: _ONE_ENTRYPOINT,
        ),
        Rule(
            cel="!has(self.engine) || !has(self.args) || size(self.args) == 0",
            message=f"spec.entrypoint: {_ENGINE_NO_ARGS}",
            holds=lambda e: e.engine is None or not e.args,
            explain=lambda _: _ENGINE_NO_ARGS,
        ),
    )


class EmptyDirCheckpoint(KubeModel):
    medium: Literal["", "Memory"] | None = None
    size_limit: Quantity | None = None

    @field_validator("size_limit")
    @classmethod
    def _quantity(cls, value: str | int | None) -> str | int | None:
        return None if value is None else check_quantity(value)


class PVCCheckpoint(KubeModel):
    claim_name: str = Field(
        min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
    )
    sub_path: str | None = Field(
        None,
        max_length=1024,
        pattern=r"^[^/]",
        description="Directory inside the claim; lets several jobs share one claim.",
    )


_ONE_VOLUME = "set at most one of emptyDir or persistentVolumeClaim"


class CheckpointSpec(KubeModel):
    """Where workers write checkpoints: an emptyDir (default; lost on a gang restart) or a
    PersistentVolumeClaim (ReadWriteMany when workers span nodes; survives restarts)."""

    mount_path: str = Field(
        "/checkpoints", pattern=r"^/", max_length=1024, description="RLHFJOB_CHECKPOINT_DIR."
    )
    empty_dir: EmptyDirCheckpoint | None = None
    persistent_volume_claim: PVCCheckpoint | None = None

    rules: ClassVar[tuple[Rule[CheckpointSpec], ...]] = (
        Rule(
            cel="!(has(self.emptyDir) && has(self.persistentVolumeClaim))",
            message=f"spec.checkpoint: {_ONE_VOLUME}",
            holds=lambda c: c.empty_dir is None or c.persistent_volume_claim is None,
            explain=lambda _: _ONE_VOLUME,
        ),
    )


class RunPolicy(KubeModel):
    """When the job gives up, how long it may run and take to stop, when it is cleaned up."""

    backoff_limit: int = Field(
        3, ge=0, le=1000, description="Gang restarts before the job is Failed."
    )
    active_deadline_seconds: int | None = Field(
        None, ge=1, description="Fail the job after this long since it (last) started."
    )
    ttl_seconds_after_finished: int | None = Field(
        None, ge=0, description="Delete the job this long after it Succeeded or Failed."
    )
    suspend: bool = Field(False, description="True deletes the pods and keeps the status.")
    termination_grace_period_seconds: int | None = Field(
        None,
        ge=1,
        description="Every pod's terminationGracePeriodSeconds (Kubernetes' 30 when unset): "
        "the time a SIGTERMed gang has to write its emergency checkpoint. Applies to the "
        "pods of the next restart generation.",
    )
    scheduling_policy: SchedulingPolicy | None = Field(
        None, description="The gang's scheduler, priority and PodGroup (next generation on)."
    )
    startup_timeout_seconds: int | None = Field(
        None,
        ge=1,
        description="A generation's gang not all Running this long after its pods were "
        "created (Kueue's queueing not counted) is a failure of the first pod not running "
        "(Unschedulable, ImagePullBackOff...), which failurePolicy then acts on.",
    )
    failure_policy: FailurePolicy | None = Field(
        None,
        description="Rules, as the batch Job's podFailurePolicy, tried before the defaults: "
        "DisruptionTarget=True restarts uncounted, exit 78 fails, exit 79 restarts "
        "uncounted, anything else restarts counted.",
    )


# --- Rules of RLHFJobSpec beyond those it shares with JobConfig --------------------

_NAME_RULE = (
    "a model name is lowercase letters, digits, '-' or '_', "
    "at most 40 characters, starting and ending with a letter or digit"
)
_DRIVER_NAME = f"'{DRIVER_ROLE}' is the driver's role; rename the model"
_SUSPENDED = "(has({o}.runPolicy) && has({o}.runPolicy.suspend) && {o}.runPolicy.suspend)"


def _placement_rule(name: str, empty: str) -> Rule[Any]:
    """spec.<name> changes only while the job is suspended before or after the update,
    so Kueue can inject (on admission) and restore (on eviction) a flavour's placement."""
    return transition(
        f"{_SUSPENDED.format(o='oldSelf')} || {_SUSPENDED.format(o='self')} || "
        f"{cel_or('self', name, empty)} == {cel_or('oldSelf', name, empty)}",
        f"spec.{name} may change only while spec.runPolicy.suspend is true",
        field_path=f".{name}",
    )


def _misnamed(spec: RLHFJobSpec) -> str | None:
    # fullmatch, as RE2 in the API server: re.match's $ would let a trailing newline through.
    return next((n for n in spec.models if not re.fullmatch(MODEL_NAME_PATTERN, n)), None)


_ROLE_RULE = f"onExitCodes.role is '{DRIVER_ROLE}' or a name in spec.models"


def _unknown_role(spec: RLHFJobSpec) -> int | None:
    """The index of the first failurePolicy rule naming a role the job does not have."""
    policy = spec.run_policy.failure_policy
    for index, rule in enumerate(policy.rule_list if policy else []):
        role = rule.on_exit_codes.role if rule.on_exit_codes else None
        if role is not None and role != DRIVER_ROLE and role not in spec.models:
            return index
    return None


_SPEC_RULES: tuple[Rule[RLHFJobSpec], ...] = (
    Rule(
        # models may be absent (no models); reading it would fail the rule.
        cel=f"!has(self.models) || self.models.all(k, k.matches('{MODEL_NAME_PATTERN}'))",
        message=f"spec.models: {_NAME_RULE}",
        holds=lambda s: _misnamed(s) is None,
        explain=lambda s: f"models.{_misnamed(s)}: {_NAME_RULE}",
        field_path=".models",
    ),
    Rule(
        cel=f"!has(self.models) || !('{DRIVER_ROLE}' in self.models)",
        message=f"spec.models: {_DRIVER_NAME}",
        holds=lambda s: DRIVER_ROLE not in s.models,
        explain=lambda _: f"models.{DRIVER_ROLE}: {_DRIVER_NAME}",
        field_path=".models",
    ),
    COLOCATED_MODELS_EXIST,
    Rule(
        cel="!has(self.runPolicy) || !has(self.runPolicy.failurePolicy) || "
        "!has(self.runPolicy.failurePolicy.rules) || self.runPolicy.failurePolicy.rules.all("
        "r, !has(r.onExitCodes) || !has(r.onExitCodes.role) || "
        f"r.onExitCodes.role == '{DRIVER_ROLE}' || "
        "(has(self.models) && r.onExitCodes.role in self.models))",
        message=f"spec.runPolicy.failurePolicy: {_ROLE_RULE}",
        holds=lambda s: _unknown_role(s) is None,
        explain=lambda s: f"runPolicy.failurePolicy.rules[{_unknown_role(s)}]: {_ROLE_RULE}",
        field_path=".runPolicy",
    ),
    COLOCATED_REPLICAS_MATCH,
    REPLICAS_GET_BATCHES,
    STALENESS_SYNCS_EVERY_EPISODE,
    reserved_env_rule("spec.env"),
    _placement_rule("nodeSelector", "{}"),
    _placement_rule("tolerations", "[]"),
    # Transition rules on a field run only when it is in the old and the new object, so
    # adding or removing an optional field needs these.
    *(
        transition(
            f"has(self.{name}) == has(oldSelf.{name})",
            f"spec.{name} is immutable; delete and re-create the job",
            field_path=f".{name}",
        )
        for name in ("driver", "podTemplate", "checkpoint", "imagePullPolicy")
    ),
)


class RLHFJobSpec(KubeModel):
    """``spec`` of an RLHFJob. Everything but ``runPolicy`` is immutable once created;
    ``nodeSelector`` and ``tolerations`` may change while the job is suspended."""

    entrypoint: Entrypoint = Field(json_schema_extra=immutable("entrypoint"))
    image: str = Field(
        min_length=1,
        max_length=512,
        description="Runtime image of every pod unless a role sets its own.",
        json_schema_extra=immutable("image"),
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        None, json_schema_extra=immutable("imagePullPolicy")
    )
    runtime: RuntimeSpec = Field(
        default_factory=lambda: RuntimeSpec(), json_schema_extra=immutable("runtime")
    )
    models: dict[str, ModelSpec] = Field(
        default_factory=dict,
        max_length=64,
        description="One worker pod per replica; num_gpu becomes nvidia.com/gpu.",
        json_schema_extra=immutable("models"),
    )
    driver: PodSettings | None = Field(
        None, description="The driver pod's settings.", json_schema_extra=immutable("driver")
    )
    pod_template: PodSettings | None = Field(
        None,
        description="Pod settings of every role; spec.driver and models.<name>.pod override "
        "them (lists of named items merge by name, maps key-wise, scalars override).",
        json_schema_extra=immutable("podTemplate"),
    )
    node_selector: NodeSelector = Field(
        default_factory=dict,
        description="For every pod of the job; mutable while suspended.",
    )
    tolerations: list[Toleration] = Field(
        default_factory=list,
        max_length=32,
        description="For every pod of the job; mutable while suspended.",
    )
    env: list[EnvVar] = Field(
        default_factory=list,
        max_length=128,
        description="Extra environment of every pod.",
        json_schema_extra=immutable("env"),
    )
    checkpoint: CheckpointSpec = Field(
        default_factory=lambda: CheckpointSpec.model_validate({}),
        json_schema_extra=immutable("checkpoint"),
    )
    run_policy: RunPolicy = Field(default_factory=lambda: RunPolicy.model_validate({}))

    rules: ClassVar[tuple[Rule[RLHFJobSpec], ...]] = _SPEC_RULES

    @property
    def config(self) -> JobConfig:
        """The ``runtime`` and ``models`` sections, as the runtime's Engine takes them."""
        return JobConfig.model_construct(runtime=self.runtime, models=self.models)

    @model_validator(mode="after")
    def _check_pod_names(self) -> RLHFJobSpec:
        # No Rule: the API server does not check this (it would compare every pair of model
        # names), as tests/operator/malformed.py records; the operator refuses such a job.
        dns: dict[str, str] = {}
        for name in self.models:
            other = dns.setdefault(name.replace("_", "-"), name)
            if other != name:
                raise ValueError(
                    f"models.{name} and models.{other} give the same pod names; rename one"
                )
        return self


class ObjectMeta(BaseModel):
    """The part of metadata rlhfjob reads; the rest (managedFields, ...) passes through."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(max_length=JOB_NAME_MAX, pattern=JOB_NAME_PATTERN)
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class RLHFJob(BaseModel):
    """The whole manifest: what ``kubectl apply`` and ``rlhfjob run job.yaml`` take."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    api_version: Literal["rlhf.dev/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["RLHFJob"]
    metadata: ObjectMeta
    spec: RLHFJobSpec
    status: RLHFJobStatus | None = None

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace or "default"

    def manifest(self) -> dict[str, Any]:
        """apiVersion, kind, name/namespace and spec, as a plain dict (the ConfigMap's copy)."""
        meta: dict[str, Any] = {"name": self.metadata.name}
        if self.metadata.namespace:
            meta["namespace"] = self.metadata.namespace
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": meta,
            "spec": self.spec.model_dump(mode="json", by_alias=True, exclude_none=True),
        }
