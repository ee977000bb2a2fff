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
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RuntimeSpec(_Closed):
    """ChatLearn's ``runtime`` section: how episodes are cut and trained."""

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


class JobConfig(_Closed):
    """The ``runtime`` and ``models`` sections: everything the Engine needs."""

    runtime: RuntimeSpec = Field(default_factory=lambda: RuntimeSpec())
    models: dict[str, ModelSpec] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_models(self) -> JobConfig:
        rt = self.runtime
        for group in rt.colocation:
            for name in group:
                if name not in self.models:
                    raise ValueError(
                        f"runtime.colocation names model {name!r}, which is not under models "
                        f"(known: {sorted(self.models)})"
                    )
        for name, model in self.models.items():
            batch = model.generation_batch_size or rt.generation_batch_size
            if model.num_replica * batch > rt.sample_per_episode:
                raise ValueError(
                    f"models.{name}: num_replica ({model.num_replica}) x generation_batch_size "
                    f"({batch}) = {model.num_replica * batch} exceeds runtime.sample_per_episode "
                    f"({rt.sample_per_episode}); some replicas would never get a batch"
                )
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

    A YAML file may be a bare ``{runtime, models}`` document or a whole RLHFJob
    manifest, whose ``spec`` then holds the two sections. Raises SpecError with
    every problem named by its field path; a missing file names the path.
    """
    if config is None:
        return JobConfig()
    if isinstance(config, JobConfig):
        return config
    if isinstance(config, (str, Path)):
        path = Path(config)
        if not path.is_file():
            raise SpecError(f"config file {str(path)!r} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise SpecError(f"config file {str(path)!r} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise SpecError(f"config file {str(path)!r} must hold a mapping, not {loaded!r}")
        config = loaded
    if not isinstance(config, dict):
        raise SpecError(
            f"config must be a dict, a YAML path or a JobConfig, not {type(config).__name__}"
        )
    if "spec" in config and "kind" in config:
        spec = config.get("spec") or {}
        config = {k: spec[k] for k in ("runtime", "models") if k in spec}
    try:
        return JobConfig.model_validate(config)
    except ValidationError as exc:
        raise SpecError("invalid job config:\n" + format_validation_error(exc)) from exc
