"""Pod-level settings: resources, tolerations, node selectors and extra environment."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, field_validator

from rlhfjob_operator.contract import GPU_RESOURCE
from rlhfjob_operator.spec.base import KubeModel, Quantity, check_quantity
from rlhfjob_operator.spec.rules import Rule

__all__ = ["EnvVar", "NodeSelector", "PodSettings", "ResourceRequirements", "Toleration"]

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


class PodSettings(KubeModel):
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


class EnvVar(KubeModel):
    """An extra environment variable for every pod of the job."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=128)
    value: str = Field("", max_length=32768)
