"""The RLHFJob API types: the one source of truth.

The runtime validates its config (the ``runtime`` and ``models`` sections)
with these models, the CRD under ``crds/`` is generated from them, and the
operator plans pods from them. This package must never import torch.

Keys and defaults of ``runtime`` and ``models.<name>`` follow ChatLearn, so a
ChatLearn user ports a config by copying it. Every model forbids unknown keys:
a typo is an error that names the key, never a silently ignored setting.
Each cross-field rule is one :class:`~rlhfjob_operator.spec.rules.Rule` that
gives both the CRD's CEL rule and pydantic's check.

Layers, each importing only those above it: ``rules`` (Rule), ``base`` (names,
SpecError, base models), ``env``, ``pod``, ``merge``, ``runtime`` (ChatLearn's sections,
JobConfig), ``scheduling``, ``failure`` (runPolicy.failurePolicy and what it
decides), ``status``, ``job`` (RLHFJobSpec, RLHFJob), ``interpolation`` (OmegaConf's
``${a.b}``), ``chatlearn`` (ChatLearn's spellings of keys), ``load``.
"""

from rlhfjob_operator.spec.base import API_VERSION, GROUP, KIND, PLURAL, VERSION, SpecError
from rlhfjob_operator.spec.env import EnvFromSource, EnvVar, NameRef
from rlhfjob_operator.spec.failure import ExitCodes, FailurePolicy, FailureRule
from rlhfjob_operator.spec.job import (
    JOB_NAME_MAX,
    JOB_NAME_PATTERN,
    MODEL_NAME_PATTERN,
    CheckpointSpec,
    Entrypoint,
    ObjectMeta,
    RLHFJob,
    RLHFJobSpec,
    RunPolicy,
)
from rlhfjob_operator.spec.load import format_validation_error, load_job, load_job_config
from rlhfjob_operator.spec.merge import merge_pod_settings
from rlhfjob_operator.spec.pod import (
    PodSettings,
    ResourceRequirements,
    Toleration,
    Volume,
    VolumeMount,
)
from rlhfjob_operator.spec.rules import Rule
from rlhfjob_operator.spec.runtime import JobConfig, ModelSpec, RuntimeSpec
from rlhfjob_operator.spec.scheduling import PodGroupKind, PodGroupPolicy, SchedulingPolicy
from rlhfjob_operator.spec.status import (
    CONDITION_TYPES,
    Condition,
    ConditionType,
    JobProgress,
    ModelStatus,
    Phase,
    RLHFJobStatus,
)

__all__ = [
    "API_VERSION",
    "CONDITION_TYPES",
    "GROUP",
    "JOB_NAME_MAX",
    "JOB_NAME_PATTERN",
    "KIND",
    "MODEL_NAME_PATTERN",
    "PLURAL",
    "VERSION",
    "CheckpointSpec",
    "Condition",
    "ConditionType",
    "Entrypoint",
    "EnvFromSource",
    "EnvVar",
    "ExitCodes",
    "FailurePolicy",
    "FailureRule",
    "JobConfig",
    "JobProgress",
    "ModelSpec",
    "ModelStatus",
    "NameRef",
    "ObjectMeta",
    "Phase",
    "PodGroupKind",
    "PodGroupPolicy",
    "PodSettings",
    "RLHFJob",
    "RLHFJobSpec",
    "RLHFJobStatus",
    "ResourceRequirements",
    "Rule",
    "RunPolicy",
    "RuntimeSpec",
    "SchedulingPolicy",
    "SpecError",
    "Toleration",
    "Volume",
    "VolumeMount",
    "format_validation_error",
    "load_job",
    "load_job_config",
    "merge_pod_settings",
]
