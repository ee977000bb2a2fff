"""Pod-level settings of a role: resources, placement, identity, volumes (env: env.py).

``spec.podTemplate`` holds them for every role; ``spec.driver`` and
``models.<name>.pod`` override them per role (spec/merge.py says how).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import ConfigDict, Field, field_validator

from rlhfjob_operator.contract import COMMON_LABELS, GPU_RESOURCE, OWN_KEY_PREFIX
from rlhfjob_operator.spec.base import KubeModel, Quantity, check_quantity
from rlhfjob_operator.spec.env import (
    NAME_PATTERN,
    EnvFromSource,
    EnvVar,
    NameRef,
    reserved_env_rule,
)
from rlhfjob_operator.spec.rules import Rule

__all__ = [
    "OWN_MOUNT_PATHS",
    "OWN_VOLUMES",
    "NodeSelector",
    "PodSettings",
    "ResourceRequirements",
    "Toleration",
    "Volume",
    "VolumeMount",
]

_SHORT = 253


class ResourceRequirements(KubeModel):
    """Extra requests and limits (memory, ephemeral-storage, ...); GPUs come from num_gpu."""

    requests: dict[str, Quantity] = Field(default_factory=dict, max_length=16)
    limits: dict[str, Quantity] = Field(default_factory=dict, max_length=16)

    rules: ClassVar[tuple[Rule[ResourceRequirements], ...]] = (
        Rule(
            cel=f"(!has(self.requests) || !('{GPU_RESOURCE}' in self.requests)) && "
            f"(!has(self.limits) || !('{GPU_RESOURCE}' in self.limits))",
            message=f"{GPU_RESOURCE} is set by models.<name>.num_gpu; remove it from resources",
            holds=lambda r: GPU_RESOURCE not in r.requests and GPU_RESOURCE not in r.limits,
        ),
    )

    @field_validator("requests", "limits")
    @classmethod
    def _check(cls, value: dict[str, str | int]) -> dict[str, str | int]:
        for key, quantity in value.items():
            try:
                check_quantity(quantity)
            except ValueError as exc:
                raise ValueError(f"{key}: {exc}") from None
        return value


class Toleration(KubeModel):
    """A Kubernetes toleration, as in a pod spec."""

    key: str | None = Field(None, max_length=_SHORT)
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = Field(None, max_length=63)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None

    rules: ClassVar[tuple[Rule[Toleration], ...]] = (
        Rule(
            cel="!has(self.operator) || self.operator != 'Exists' || "
            "!has(self.value) || self.value == ''",
            message="a toleration with operator Exists takes no value",
            holds=lambda t: t.operator != "Exists" or not t.value,
            field_path=".value",
        ),
        Rule(
            cel="!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
            message="tolerationSeconds needs effect NoExecute",
            holds=lambda t: t.toleration_seconds is None or t.effect == "NoExecute",
            field_path=".tolerationSeconds",
        ),
    )


NodeSelector = Annotated[dict[str, Annotated[str, Field(max_length=63)]], Field(max_length=32)]


# Volumes every pod already has (manifests.py); a role's volume may not take these names.
OWN_VOLUMES = ("spec", "tmp", "shm", "checkpoint")
# Where every pod mounts them (the checkpoint volume's mountPath is spec.checkpoint's).
OWN_MOUNT_PATHS = ("/etc/rlhfjob", "/tmp", "/dev/shm")


class Volume(KubeModel):
    """A pod volume: ``name`` plus one Kubernetes volume source (persistentVolumeClaim,
    secret, configMap, ...), passed to the pod as written; the API server checks it."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class VolumeMount(KubeModel):
    """Where the container mounts one of the role's volumes."""

    name: str = Field(min_length=1, max_length=63)
    mount_path: str = Field(pattern=r"^/", max_length=1024)
    sub_path: str | None = Field(None, max_length=1024, pattern=r"^[^/]")
    read_only: bool | None = None


_OWN_LABELS = ", ".join(f"'{k}'" for k in COMMON_LABELS)
_LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"


def _quoted(names: tuple[str, ...]) -> str:
    return ", ".join(f"'{n}'" for n in names)


def _own_key(key: str, *, label: bool) -> bool:
    return key.startswith(OWN_KEY_PREFIX) or (label and key in COMMON_LABELS)


class PodSettings(KubeModel):
    """Pod-level settings of every role (``spec.podTemplate``) or of one (``spec.driver``,
    ``models.<name>.pod``).

    What rlhfjob sets on every pod is refused here rather than overridden later:
    its volumes (spec, tmp, shm, checkpoint) and their mount paths, its labels and
    annotations (``rlhf.dev/*``, ``app.kubernetes.io/name`` and ``managed-by``), and
    its environment (spec/env.py). affinity, a volume's source and an env var's
    valueFrom are passed to the pod as written; the API server checks them when it
    creates the pod.
    """

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
    service_account_name: str | None = Field(
        None, min_length=1, max_length=253, pattern=NAME_PATTERN
    )
    image_pull_secrets: list[NameRef] = Field(default_factory=list, max_length=16)
    env: list[EnvVar] = Field(default_factory=list, max_length=128)
    env_from: list[EnvFromSource] = Field(default_factory=list, max_length=16)
    volumes: list[Volume] = Field(default_factory=list, max_length=32)
    volume_mounts: list[VolumeMount] = Field(default_factory=list, max_length=32)
    affinity: dict[str, Any] | None = Field(None, description="A pod's spec.affinity, whole.")
    labels: dict[str, Annotated[str, Field(max_length=63, pattern=_LABEL_VALUE)]] = Field(
        default_factory=dict, max_length=32
    )
    annotations: dict[str, Annotated[str, Field(max_length=4096)]] = Field(
        default_factory=dict, max_length=32
    )
    priority_class_name: str | None = Field(
        None, min_length=1, max_length=253, pattern=NAME_PATTERN
    )

    rules: ClassVar[tuple[Rule[PodSettings], ...]] = (
        reserved_env_rule("env"),
        Rule(
            cel=f"!has(self.volumes) || self.volumes.all(v, !(v.name in [{_quoted(OWN_VOLUMES)}]))",
            message=f"volumes: {', '.join(OWN_VOLUMES)} are rlhfjob's own volumes; rename yours",
            holds=lambda p: all(v.name not in OWN_VOLUMES for v in p.volumes),
            field_path=".volumes",
        ),
        Rule(
            cel="!has(self.volumeMounts) || "
            f"self.volumeMounts.all(m, !(m.mountPath in [{_quoted(OWN_MOUNT_PATHS)}]))",
            message=f"volumeMounts: rlhfjob mounts {', '.join(OWN_MOUNT_PATHS)}; "
            "choose another mountPath",
            holds=lambda p: all(m.mount_path not in OWN_MOUNT_PATHS for m in p.volume_mounts),
            field_path=".volumeMounts",
        ),
        Rule(
            cel="!has(self.labels) || self.labels.all(k, "
            f"!k.startsWith('{OWN_KEY_PREFIX}') && !(k in [{_OWN_LABELS}]))",
            message=f"labels: {OWN_KEY_PREFIX}*, {', '.join(COMMON_LABELS)} are set by rlhfjob; "
            "remove them",
            holds=lambda p: not any(_own_key(k, label=True) for k in p.labels),
            field_path=".labels",
        ),
        Rule(
            cel="!has(self.annotations) || "
            f"self.annotations.all(k, !k.startsWith('{OWN_KEY_PREFIX}'))",
            message=f"annotations: {OWN_KEY_PREFIX}* annotations are set by rlhfjob; remove them",
            holds=lambda p: not any(_own_key(k, label=False) for k in p.annotations),
            field_path=".annotations",
        ),
    )
