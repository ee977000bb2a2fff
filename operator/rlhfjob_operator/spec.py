"""The RLHFJob API types: the one source of truth.

The runtime validates its config (the ``runtime`` and ``models`` sections)
with these models, the CRD under ``crds/`` is generated from them, and the
operator plans pods from them. This module must never import torch.

Keys and defaults of ``runtime`` and ``models.<name>`` follow ChatLearn, so a
ChatLearn user ports a config by copying it. Every model forbids unknown keys:
a typo is an error that names the key, never a silently ignored setting.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AliasGenerator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

from rlhfjob_operator.contract import DRIVER_ROLE, GPU_RESOURCE, RESERVED_ENV, RESERVED_ENV_PREFIX

__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "PLURAL",
    "VERSION",
    "CheckpointSpec",
    "Condition",
    "ConditionType",
    "Entrypoint",
    "EnvVar",
    "JobConfig",
    "ModelSpec",
    "ModelStatus",
    "ObjectMeta",
    "Phase",
    "PodSettings",
    "RLHFJob",
    "RLHFJobSpec",
    "RLHFJobStatus",
    "ResourceRequirements",
    "RunPolicy",
    "RuntimeSpec",
    "SpecError",
    "Toleration",
    "format_validation_error",
    "load_job",
    "load_job_config",
]

GROUP = "rlhf.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "RLHFJob"
PLURAL = "rlhfjobs"


class SpecError(ValueError):
    """A job spec or config that cannot run; the message names the field and the fix."""


class _Closed(BaseModel):
    # strict: "3" is not 3 and "yes" is not true, as for the API server (its schema types
    # are exact), so a spec is refused or accepted the same way by every launcher.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)


def _runtime_cel(schema: dict[str, Any], cls: type[BaseModel]) -> None:
    """The API server's copy of RuntimeSpec._check_batches (defaults filled in by CEL)."""
    d = {name: field.default for name, field in cls.model_fields.items()}
    micro = _cel_or("self", "train_micro_batch_size", d["train_micro_batch_size"])
    glob = _cel_or("self", "train_global_batch_size", micro)
    spe = _cel_or("self", "sample_per_episode", d["sample_per_episode"])
    gen = _cel_or("self", "generation_batch_size", d["generation_batch_size"])
    schema["x-kubernetes-validations"] = [
        _cel(
            f"{glob} % {micro} == 0",
            "runtime.train_global_batch_size must be a multiple of runtime.train_micro_batch_size",
            field_path=".train_global_batch_size",
        ),
        _cel(
            f"{glob} <= {spe}",
            "runtime.train_global_batch_size is larger than runtime.sample_per_episode: "
            "no optimizer step could ever run",
            field_path=".train_global_batch_size",
        ),
        _cel(
            f"{gen} <= {spe}",
            "runtime.generation_batch_size is larger than runtime.sample_per_episode",
            field_path=".generation_batch_size",
        ),
        _cel(
            "!has(self.save_episode_interval) || has(self.data_checkpoint_path)",
            "runtime.save_episode_interval is set but runtime.data_checkpoint_path is not; "
            "set a directory for checkpoints",
            field_path=".data_checkpoint_path",
        ),
        _cel(
            "!has(self.colocation) || self.colocation.all(g, g.size() >= 2)",
            "runtime.colocation: a colocation group names at least two models",
            field_path=".colocation",
        ),
        _cel(
            "!has(self.colocation) || self.colocation.all(g, g.all(n, "
            "self.colocation.filter(h, n in h).size() == 1))",
            "runtime.colocation: a model is in two colocation groups; put it in one group",
            field_path=".colocation",
        ),
    ]


class RuntimeSpec(_Closed):
    """ChatLearn's ``runtime`` section: how episodes are cut and trained."""

    model_config = ConfigDict(json_schema_extra=_runtime_cel)

    num_episode: int = Field(5000, ge=1, description="Episodes to run.")
    sample_per_episode: int = Field(1000, ge=1, description="Prompts taken per episode.")
    num_training_epoch: int = Field(1, ge=1, description="Passes over each episode's samples.")
    generation_batch_size: int = Field(2, ge=1, description="Prompts per env-flow batch.")
    train_micro_batch_size: int = Field(2, ge=1, description="Samples per micro-batch.")
    train_global_batch_size: int | None = Field(
        None, ge=1, description="Samples per optimizer step; defaults to the micro batch."
    )
    save_episode_interval: int | None = Field(
        None, ge=1, description="Checkpoint every N episodes; none when unset."
    )
    eval_episode_interval: int | None = Field(
        None, ge=1, description="Evaluate every N episodes; never when unset."
    )
    enable_eval_before_training: bool = False
    data_shuffle: bool = True
    colocation: list[list[str]] = Field(
        default_factory=list, description="Groups of model names that share one worker."
    )
    data_checkpoint_path: str | None = Field(
        None, description="Directory for checkpoints (weights, optimizer, data position, RNG)."
    )
    enable_resume_training: bool = True
    stream_data_loader_type: Literal["fixed", "dynamic"] = "fixed"
    max_replay_episode: int = Field(
        0, ge=0, description="Episodes kept for the replay sample manager (0: this one only)."
    )
    coalesced_buffer_mb: int = Field(100, ge=1, description="Parameter-sync bucket size in MB.")
    seed: int = 1234

    @property
    def global_batch_size(self) -> int:
        return self.train_global_batch_size or self.train_micro_batch_size

    @model_validator(mode="after")
    def _check_batches(self) -> RuntimeSpec:
        micro, glob = self.train_micro_batch_size, self.global_batch_size
        if glob % micro:
            raise ValueError(
                f"runtime.train_global_batch_size ({glob}) must be a multiple of "
                f"runtime.train_micro_batch_size ({micro})"
            )
        if glob > self.sample_per_episode:
            raise ValueError(
                f"runtime.train_global_batch_size ({glob}) is larger than "
                f"runtime.sample_per_episode ({self.sample_per_episode}): no optimizer step "
                "could ever run; lower the batch or raise sample_per_episode"
            )
        if self.generation_batch_size > self.sample_per_episode:
            raise ValueError(
                f"runtime.generation_batch_size ({self.generation_batch_size}) is larger than "
                f"runtime.sample_per_episode ({self.sample_per_episode})"
            )
        if self.save_episode_interval and not self.data_checkpoint_path:
            raise ValueError(
                "runtime.save_episode_interval is set but runtime.data_checkpoint_path is not; "
                "set a directory for checkpoints"
            )
        seen: dict[str, int] = {}
        for index, group in enumerate(self.colocation):
            if len(group) < 2:
                raise ValueError(
                    f"runtime.colocation[{index}] has {len(group)} model(s); a colocation "
                    "group names at least two models"
                )
            for name in group:
                if name in seen:
                    raise ValueError(
                        f"model {name!r} is in two colocation groups "
                        f"(runtime.colocation[{seen[name]}] and [{index}]); "
                        "put it in one group"
                    )
                seen[name] = index
        return self


# --- Kubernetes-facing pieces -------------------------------------------------
# camelCase on the wire (aliases), snake_case in Python. Only the aliases are
# accepted, so pydantic and the API server agree on every key.


class _Kube(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,  # as _Closed: exact types, like the API server
        validate_assignment=True,
        alias_generator=AliasGenerator(alias=to_camel),
        validate_by_alias=True,
        validate_by_name=False,
        serialize_by_alias=True,
    )


def _cel(rule: str, message: str, *, field_path: str | None = None) -> JsonDict:
    """One ``x-kubernetes-validations`` entry: the API server's mirror of a pydantic check."""
    entry: JsonDict = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    return entry


def _cel_or(obj: str, field: str, default: object) -> str:
    """CEL for ``obj.field`` or its pydantic default: the CRD carries no defaults."""
    return f"(has({obj}.{field}) ? {obj}.{field} : {default})"


_QUANTITY_RE = re.compile(
    r"^[+-]?(\d+(\.\d*)?|\.\d+)(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?(\d+(\.\d*)?|\.\d+))?$"
)


def _check_quantity(value: str | int) -> str | int:
    if isinstance(value, str) and not _QUANTITY_RE.match(value):
        raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 500m, 2, 4Gi)")
    return value


# A Kubernetes resource quantity: 2, "500m", "4Gi".
Quantity = Annotated[
    int | str,
    WithJsonSchema({"x-kubernetes-int-or-string": True}),
]
_LABEL_KEY = r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
_SHORT = 253


class ResourceRequirements(_Kube):
    """Extra requests and limits (memory, ephemeral-storage, ...); GPUs come from num_gpu."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    f"(!has(self.requests) || !('{GPU_RESOURCE}' in self.requests)) && "
                    f"(!has(self.limits) || !('{GPU_RESOURCE}' in self.limits))",
                    f"{GPU_RESOURCE} is set by models.<name>.num_gpu; remove it from resources",
                )
            ]
        }
    )

    requests: dict[str, Quantity] = Field(default_factory=dict, max_length=16)
    limits: dict[str, Quantity] = Field(default_factory=dict, max_length=16)

    @field_validator("requests", "limits")
    @classmethod
    def _check(cls, value: dict[str, str | int]) -> dict[str, str | int]:
        for key, quantity in value.items():
            if key == GPU_RESOURCE:
                raise ValueError(
                    f"{GPU_RESOURCE} is set by models.<name>.num_gpu; remove it from resources"
                )
            try:
                _check_quantity(quantity)
            except ValueError as exc:
                raise ValueError(f"{key}: {exc}") from None
        return value


class Toleration(_Kube):
    """A Kubernetes toleration, as in a pod spec."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "!has(self.operator) || self.operator != 'Exists' || "
                    "!has(self.value) || self.value == ''",
                    "a toleration with operator Exists takes no value",
                    field_path=".value",
                ),
                _cel(
                    "!has(self.tolerationSeconds) || "
                    "(has(self.effect) && self.effect == 'NoExecute')",
                    "tolerationSeconds needs effect NoExecute",
                    field_path=".tolerationSeconds",
                ),
            ]
        }
    )

    key: str | None = Field(None, max_length=_SHORT)
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = Field(None, max_length=63)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None

    @model_validator(mode="after")
    def _check(self) -> Toleration:
        if self.operator == "Exists" and self.value:
            raise ValueError("a toleration with operator Exists takes no value")
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError("tolerationSeconds needs effect NoExecute")
        return self


NodeSelector = Annotated[dict[str, Annotated[str, Field(max_length=63)]], Field(max_length=32)]


class PodSettings(_Kube):
    """Pod-level settings of one role (the driver, or one model's replicas)."""

    image: str | None = Field(
        None, min_length=1, max_length=512, description="Overrides spec.image for this role."
    )
    resources: ResourceRequirements | None = Field(
        None, description="Extra requests and limits, e.g. memory."
    )
    node_selector: NodeSelector = Field(
        default_factory=dict, description="Merged over spec.nodeSelector."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=32, description="Added to spec.tolerations."
    )


class ModelSpec(_Closed):
    """ChatLearn's ``models.<name>`` section: one model's placement and schedule."""

    num_gpu: int = Field(0, ge=0, description="GPUs per replica.")
    num_cpu: int = Field(1, ge=0, description="CPUs per replica.")
    num_replica: int = Field(1, ge=1, description="Copies of the model.")
    trainable: bool = False
    generation_batch_size: int | None = Field(
        None, ge=1, description="Overrides runtime.generation_batch_size for this model."
    )
    sync_frequency: int = Field(
        1, ge=1, description="A trainable model syncs its weights every N episodes."
    )
    args: dict[str, Any] = Field(
        default_factory=dict,
        description="Free-form arguments for the module (model_args), e.g. model_path.",
    )
    pod: PodSettings | None = Field(
        None,
        description="Kubernetes placement of this model's pods (camelCase keys); "
        "ignored by the local launcher.",
    )


def _check_models(rt: RuntimeSpec, models: dict[str, ModelSpec]) -> None:
    """Checks across ``runtime`` and ``models``, shared by JobConfig and RLHFJobSpec."""
    for group in rt.colocation:
        for name in group:
            if name not in models:
                raise ValueError(
                    f"runtime.colocation names model {name!r}, which is not under models "
                    f"(known: {sorted(models)})"
                )
    for name, model in models.items():
        batch = model.generation_batch_size or rt.generation_batch_size
        if model.num_replica * batch > rt.sample_per_episode:
            raise ValueError(
                f"models.{name}: num_replica ({model.num_replica}) x generation_batch_size "
                f"({batch}) = {model.num_replica * batch} exceeds runtime.sample_per_episode "
                f"({rt.sample_per_episode}); some replicas would never get a batch"
            )


class JobConfig(_Closed):
    """The ``runtime`` and ``models`` sections: everything the Engine needs."""

    runtime: RuntimeSpec = Field(default_factory=lambda: RuntimeSpec())
    models: dict[str, ModelSpec] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_models(self) -> JobConfig:
        _check_models(self.runtime, self.models)
        return self

    def model(self, name: str) -> ModelSpec:
        """The spec of model ``name``; defaults when the config does not mention it."""
        return self.models.get(name) or ModelSpec()


def format_validation_error(error: ValidationError, *, root: str = "") -> str:
    """One line per problem, each naming the dotted field path and what is wrong."""
    lines = []
    for item in error.errors():
        path = ".".join(str(p) for p in item["loc"])
        path = f"{root}.{path}" if root and path else (root or path)
        msg = item["msg"]
        if item["type"] == "extra_forbidden":
            msg = "unknown key; remove it or check its spelling"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        lines.append(f"{path}: {msg}" if path else msg)
    return "\n".join(lines)


def load_job_config(config: JobConfig | dict[str, Any] | str | Path | None) -> JobConfig:
    """Validate ``config`` (typed, dict, or YAML path) into a JobConfig.

    A YAML file or dict may be a bare ``{runtime, models}`` document or a whole
    RLHFJob manifest (it has ``kind``), which is then validated as an RLHFJob
    (entrypoint, image and all) and its ``spec`` gives the two sections. Raises
    SpecError with every problem named by its field path; a missing file names
    the path.
    """
    if config is None:
        return JobConfig()
    if isinstance(config, JobConfig):
        return config
    if isinstance(config, (str, Path)):
        config = _read_yaml(Path(config), what="config")
    if not isinstance(config, dict):
        raise SpecError(
            f"config must be a dict, a YAML path or a JobConfig, not {type(config).__name__}"
        )
    if "kind" in config:
        return load_job(config).spec.config
    try:
        return JobConfig.model_validate(config)
    except ValidationError as exc:
        raise SpecError("invalid job config:\n" + format_validation_error(exc)) from exc


# --- The RLHFJob resource ------------------------------------------------------

# Model names become pod names, hostnames and label values: DNS-safe, short.
MODEL_NAME_PATTERN = r"^[a-z0-9]([a-z0-9_-]{0,38}[a-z0-9])?$"
# metadata.name becomes the headless Service's name (a DNS-1035 label) and prefixes pod names.
JOB_NAME_PATTERN = r"^[a-z]([-a-z0-9]{0,48}[a-z0-9])?$"
JOB_NAME_MAX = 50


class Entrypoint(_Kube):
    """What the driver (rank 0) runs: a Python file or module of the image, with arguments."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "has(self.file) != has(self.module)",
                    "spec.entrypoint: set exactly one of file or module",
                )
            ]
        }
    )

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
    args: list[Annotated[str, Field(max_length=4096)]] = Field(
        default_factory=list, max_length=256, description="sys.argv[1:] of the entrypoint."
    )

    @model_validator(mode="after")
    def _one(self) -> Entrypoint:
        if (self.file is None) == (self.module is None):
            raise ValueError("set exactly one of file or module")
        return self


class EnvVar(_Kube):
    """An extra environment variable for every pod of the job."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=128)
    value: str = Field("", max_length=32768)


class EmptyDirCheckpoint(_Kube):
    medium: Literal["", "Memory"] | None = None
    size_limit: Quantity | None = None

    @field_validator("size_limit")
    @classmethod
    def _quantity(cls, value: str | int | None) -> str | int | None:
        return None if value is None else _check_quantity(value)


class PVCCheckpoint(_Kube):
    claim_name: str = Field(
        min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
    )
    sub_path: str | None = Field(
        None,
        max_length=1024,
        pattern=r"^[^/]",
        description="Directory inside the claim; lets several jobs share one claim.",
    )


class CheckpointSpec(_Kube):
    """Where workers write checkpoints: an emptyDir (default; lost on a gang restart) or a
    PersistentVolumeClaim (ReadWriteMany when workers span nodes; survives restarts)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "!(has(self.emptyDir) && has(self.persistentVolumeClaim))",
                    "spec.checkpoint: set at most one of emptyDir or persistentVolumeClaim",
                )
            ]
        }
    )

    mount_path: str = Field(
        "/checkpoints", pattern=r"^/", max_length=1024, description="RLHFJOB_CHECKPOINT_DIR."
    )
    empty_dir: EmptyDirCheckpoint | None = None
    persistent_volume_claim: PVCCheckpoint | None = None

    @model_validator(mode="after")
    def _one(self) -> CheckpointSpec:
        if self.empty_dir is not None and self.persistent_volume_claim is not None:
            raise ValueError("set at most one of emptyDir or persistentVolumeClaim")
        return self


class RunPolicy(_Kube):
    """When the job gives up, how long it may run, when it is cleaned up."""

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


_IMMUTABLE = "self == oldSelf"


def _immutable(field: str) -> JsonDict:
    return {
        "x-kubernetes-validations": [
            _cel(_IMMUTABLE, f"spec.{field} is immutable; delete and re-create the job")
        ]
    }


def _spec_cel(schema: dict[str, Any], cls: type[BaseModel]) -> None:
    """Cross-field rules of RLHFJobSpec for the API server, mirroring _check_spec."""
    rt_fields = RuntimeSpec.model_fields
    m_fields = ModelSpec.model_fields
    spe = (
        "(has(self.runtime) && has(self.runtime.sample_per_episode) ? "
        f"self.runtime.sample_per_episode : {rt_fields['sample_per_episode'].default})"
    )
    gen = (
        "(has(self.runtime) && has(self.runtime.generation_batch_size) ? "
        f"self.runtime.generation_batch_size : {rt_fields['generation_batch_size'].default})"
    )

    def replicas(model: str) -> str:
        return _cel_or(f"self.models[{model}]", "num_replica", m_fields["num_replica"].default)

    colocation = (
        "(has(self.runtime) && has(self.runtime.colocation) ? self.runtime.colocation : [])"
    )
    optional = ("driver", "checkpoint", "imagePullPolicy")
    reserved = ", ".join(f"'{name}'" for name in RESERVED_ENV)
    schema["x-kubernetes-validations"] = [
        _cel(
            f"self.models.all(k, k.matches('{MODEL_NAME_PATTERN}'))",
            "spec.models: a model name is lowercase letters, digits, '-' or '_', "
            "at most 40 characters, starting and ending with a letter or digit",
            field_path=".models",
        ),
        _cel(
            f"!('{DRIVER_ROLE}' in self.models)",
            f"spec.models: '{DRIVER_ROLE}' is the driver's role; rename the model",
            field_path=".models",
        ),
        _cel(
            f"{colocation}.all(g, g.all(n, n in self.models))",
            "spec.runtime.colocation names a model that is not under spec.models",
            field_path=".runtime.colocation",
        ),
        _cel(
            f"{colocation}.all(g, g.all(n, !(n in self.models) || !(g[0] in self.models) || "
            f"{replicas('n')} == {replicas('g[0]')}))",
            "spec.runtime.colocation: models of one colocation group need the same num_replica",
            field_path=".runtime.colocation",
        ),
        _cel(
            f"self.models.all(k, {replicas('k')} * "
            f"(has(self.models[k].generation_batch_size) ? "
            f"self.models[k].generation_batch_size : {gen}) <= {spe})",
            "spec.models: num_replica x generation_batch_size exceeds "
            "runtime.sample_per_episode; some replicas would never get a batch",
            field_path=".models",
        ),
        _cel(
            f"!has(self.env) || self.env.all(e, !(e.name in [{reserved}]) && "
            f"!e.name.startsWith('{RESERVED_ENV_PREFIX}'))",
            f"spec.env: {', '.join(RESERVED_ENV)} and {RESERVED_ENV_PREFIX}* are set by "
            "rlhfjob; remove them",
            field_path=".env",
        ),
        *(
            _cel(
                f"has(self.{name}) == has(oldSelf.{name})",
                f"spec.{name} is immutable; delete and re-create the job",
                field_path=f".{name}",
            )
            for name in optional
        ),
    ]


class RLHFJobSpec(_Kube):
    """``spec`` of an RLHFJob. Everything but ``runPolicy`` is immutable once created."""

    model_config = ConfigDict(json_schema_extra=_spec_cel)

    entrypoint: Entrypoint = Field(json_schema_extra=_immutable("entrypoint"))
    image: str = Field(
        min_length=1,
        max_length=512,
        description="Runtime image of every pod unless a role sets its own.",
        json_schema_extra=_immutable("image"),
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        None, json_schema_extra=_immutable("imagePullPolicy")
    )
    runtime: RuntimeSpec = Field(
        default_factory=lambda: RuntimeSpec(), json_schema_extra=_immutable("runtime")
    )
    models: dict[str, ModelSpec] = Field(
        default_factory=dict,
        max_length=64,
        description="One worker pod per replica; num_gpu becomes nvidia.com/gpu.",
        json_schema_extra=_immutable("models"),
    )
    driver: PodSettings | None = Field(
        None, description="The driver pod's settings.", json_schema_extra=_immutable("driver")
    )
    node_selector: NodeSelector = Field(
        default_factory=dict,
        description="For every pod of the job.",
        json_schema_extra=_immutable("nodeSelector"),
    )
    tolerations: list[Toleration] = Field(
        default_factory=list,
        max_length=32,
        description="For every pod of the job.",
        json_schema_extra=_immutable("tolerations"),
    )
    env: list[EnvVar] = Field(
        default_factory=list,
        max_length=128,
        description="Extra environment of every pod.",
        json_schema_extra=_immutable("env"),
    )
    checkpoint: CheckpointSpec = Field(
        default_factory=lambda: CheckpointSpec.model_validate({}),
        json_schema_extra=_immutable("checkpoint"),
    )
    run_policy: RunPolicy = Field(default_factory=lambda: RunPolicy.model_validate({}))

    @property
    def config(self) -> JobConfig:
        """The ``runtime`` and ``models`` sections, as the runtime's Engine takes them."""
        return JobConfig.model_construct(runtime=self.runtime, models=self.models)

    @model_validator(mode="after")
    def _check_spec(self) -> RLHFJobSpec:
        _check_models(self.runtime, self.models)
        dns: dict[str, str] = {}
        for name in self.models:
            if not re.match(MODEL_NAME_PATTERN, name):
                raise ValueError(
                    f"models.{name}: a model name is lowercase letters, digits, '-' or '_', "
                    "at most 40 characters, starting and ending with a letter or digit"
                )
            if name == DRIVER_ROLE:
                raise ValueError(f"models.{name}: {name!r} is the driver's role; rename the model")
            other = dns.setdefault(name.replace("_", "-"), name)
            if other != name:
                raise ValueError(
                    f"models.{name} and models.{other} give the same pod names; rename one"
                )
        for index, group in enumerate(self.runtime.colocation):
            counts = {self.models[n].num_replica for n in group}
            if len(counts) > 1:
                raise ValueError(
                    f"runtime.colocation[{index}]: models {group} share workers, so they need "
                    f"the same num_replica (got {sorted(counts)})"
                )
        for var in self.env:
            if var.name in RESERVED_ENV or var.name.startswith(RESERVED_ENV_PREFIX):
                raise ValueError(
                    f"env: {var.name} is set by rlhfjob; remove it "
                    f"({', '.join(RESERVED_ENV)} and {RESERVED_ENV_PREFIX}* are reserved)"
                )
        return self


Phase = Literal["Created", "Running", "Restarting", "Suspended", "Succeeded", "Failed"]
ConditionType = Phase
CONDITION_TYPES: tuple[ConditionType, ...] = (
    "Created",
    "Running",
    "Restarting",
    "Suspended",
    "Succeeded",
    "Failed",
)
_TIME: JsonDict = {"format": "date-time"}


class Condition(_Kube):
    """A Kubernetes-style condition; ``status`` is "True", "False" or "Unknown"."""

    type: ConditionType
    status: Literal["True", "False", "Unknown"]
    reason: str = Field("", max_length=1024)
    message: str = Field("", max_length=32768)
    last_transition_time: str | None = Field(None, json_schema_extra=_TIME)
    last_update_time: str | None = Field(None, json_schema_extra=_TIME)


class ModelStatus(_Kube):
    replicas: int = Field(0, ge=0, description="Pods wanted for this model.")
    ready: int = Field(0, ge=0, description="Of those, Running and ready.")


class RLHFJobStatus(_Kube):
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
    restarts: int = Field(0, ge=0, description="Gang restarts after a failure.")
    restart_generation: int = Field(
        0, ge=0, description="Incremented whenever the gang is re-created (restart, resume)."
    )
    start_time: str | None = Field(None, json_schema_extra=_TIME)
    completion_time: str | None = Field(None, json_schema_extra=_TIME)
    next_restart_time: str | None = Field(None, json_schema_extra=_TIME)
    observed_generation: int | None = None
    message: str | None = None

    def condition(self, type_: ConditionType) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)


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


def load_job(manifest: RLHFJob | dict[str, Any] | str | Path) -> RLHFJob:
    """Validate a whole RLHFJob manifest (typed, dict, or YAML path).

    Raises SpecError naming every bad field by its path from the manifest root
    (``spec.models.policy.num_replica: ...``); a missing file names the path.
    """
    if isinstance(manifest, RLHFJob):
        return manifest
    if isinstance(manifest, (str, Path)):
        manifest = _read_yaml(Path(manifest), what="manifest")
    if not isinstance(manifest, dict):
        raise SpecError(f"an RLHFJob manifest is a mapping, not {type(manifest).__name__}")
    try:
        return RLHFJob.model_validate(manifest)
    except ValidationError as exc:
        name = (manifest.get("metadata") or {}).get("name", "?")
        raise SpecError(f"invalid RLHFJob {name!r}:\n" + format_validation_error(exc)) from exc


def _read_yaml(path: Path, *, what: str) -> Any:
    if not path.is_file():
        raise SpecError(f"{what} file {str(path)!r} does not exist")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SpecError(f"{what} file {str(path)!r} is not valid YAML: {exc}") from exc
    if not isinstance(loaded, dict):
        raise SpecError(f"{what} file {str(path)!r} must hold a mapping, not {loaded!r}")
    return loaded
