"""Extra environment of a role: variables (a value or a valueFrom) and envFrom sources.

rlhfjob sets RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, LOCAL_RANK and every
RLHFJOB_* variable itself; a user's ``env`` may set none of them (in any
layer: spec.env, spec.podTemplate, spec.driver, models.<name>.pod) and an
``envFrom`` prefix may not start with RLHFJOB_. Keys of an envFrom Secret or
ConfigMap cannot be checked here, but Kubernetes gives a container's ``env``
precedence over its ``envFrom``, so they never override what rlhfjob sets.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from rlhfjob_operator.contract import RESERVED_ENV, RESERVED_ENV_PREFIX
from rlhfjob_operator.spec.base import KubeModel
from rlhfjob_operator.spec.rules import Rule

__all__ = [
    "NAME_PATTERN",
    "EnvFromSource",
    "EnvVar",
    "NameRef",
    "reserved_env",
    "reserved_env_rule",
]

# A DNS subdomain: names of Secrets, ConfigMaps, ServiceAccounts, PriorityClasses.
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
_RESERVED = f"{', '.join(RESERVED_ENV)} and {RESERVED_ENV_PREFIX}*"
_ENV_NAMES = ", ".join(f"'{n}'" for n in RESERVED_ENV)


def reserved_env(names: list[str]) -> str | None:
    """The first of ``names`` that rlhfjob sets itself, or None."""
    return next((n for n in names if n in RESERVED_ENV or n.startswith(RESERVED_ENV_PREFIX)), None)


def reserved_env_rule(where: str) -> Rule[Any]:
    """The rule that ``self.env`` names no variable rlhfjob sets. ``where`` (``spec.env``,
    ``env``) starts the API server's message, which the server prefixes with the path of
    the object; pydantic's starts with ``env:`` after the object's path (``spec``,
    ``spec.models.policy.pod``), so both name the field."""
    return Rule(
        cel=f"!has(self.env) || self.env.all(e, !(e.name in [{_ENV_NAMES}]) && "
        f"!e.name.startsWith('{RESERVED_ENV_PREFIX}'))",
        message=f"{where}: {_RESERVED} are set by rlhfjob; remove them",
        holds=lambda s: reserved_env([v.name for v in s.env]) is None,
        explain=lambda s: (
            f"env: {reserved_env([v.name for v in s.env])} is set by rlhfjob; "
            f"remove it ({_RESERVED} are reserved)"
        ),
        field_path=".env",
    )


class EnvVar(KubeModel):
    """An extra environment variable: a ``value``, or ``valueFrom`` (a secretKeyRef,
    configMapKeyRef, ...: a container's env[].valueFrom, checked by the API server when
    the pod is created)."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=128)
    value: str = Field("", max_length=32768)
    value_from: dict[str, Any] | None = Field(
        None, description="As a container's env[].valueFrom: secretKeyRef, configMapKeyRef."
    )

    rules: ClassVar[tuple[Rule[EnvVar], ...]] = (
        Rule(
            cel="!has(self.valueFrom) || !has(self.value) || self.value == ''",
            message="set value or valueFrom, not both",
            holds=lambda e: e.value_from is None or not e.value,
        ),
    )

    def container_env(self) -> dict[str, Any]:
        """The container's env[] entry: ``valueFrom`` when set, else ``value``."""
        if self.value_from is not None:
            return {"name": self.name, "valueFrom": self.value_from}
        return {"name": self.name, "value": self.value}


class NameRef(KubeModel):
    """A reference by name to an object of the job's namespace (Secret, ConfigMap)."""

    name: str = Field(min_length=1, max_length=253, pattern=NAME_PATTERN)
    optional: bool | None = None


class EnvFromSource(KubeModel):
    """Every key of a Secret or ConfigMap as environment variables, as in a container."""

    prefix: str | None = Field(None, max_length=128)
    secret_ref: NameRef | None = None
    config_map_ref: NameRef | None = None

    rules: ClassVar[tuple[Rule[EnvFromSource], ...]] = (
        Rule(
            cel="has(self.secretRef) != has(self.configMapRef)",
            message="envFrom: set exactly one of secretRef or configMapRef",
            holds=lambda e: (e.secret_ref is None) != (e.config_map_ref is None),
        ),
        Rule(
            cel=f"!has(self.prefix) || !self.prefix.startsWith('{RESERVED_ENV_PREFIX}')",
            message=f"envFrom.prefix: {RESERVED_ENV_PREFIX}* variables are set by rlhfjob; "
            "choose another prefix",
            holds=lambda e: not (e.prefix or "").startswith(RESERVED_ENV_PREFIX),
            field_path=".prefix",
        ),
    )
