"""What every RLHFJob type shares: the API's names, SpecError, the two base models,
and Kubernetes quantities."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AliasGenerator, ConfigDict, WithJsonSchema
from pydantic.alias_generators import to_camel

from rlhfjob_operator.spec.rules import Ruled

__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "PLURAL",
    "VERSION",
    "ConfigModel",
    "KubeModel",
    "Quantity",
    "SpecError",
    "check_quantity",
]

GROUP = "rlhf.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "RLHFJob"
PLURAL = "rlhfjobs"


class SpecError(ValueError):
    """A job spec or config that cannot run; the message names the field and the fix."""


class ConfigModel(Ruled):
    """A ChatLearn section (``runtime``, ``models.<name>``): snake_case keys."""

    # strict: "3" is not 3 and "yes" is not true, as for the API server (its schema types
    # are exact), so a spec is refused or accepted the same way by every launcher.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)


class KubeModel(Ruled):
    """A Kubernetes-facing piece: camelCase on the wire (aliases), snake_case in Python.

    Only the aliases are accepted, so pydantic and the API server agree on every key.
    """

    model_config = ConfigDict(
        extra="forbid",
        strict=True,  # as ConfigModel: exact types, like the API server
        validate_assignment=True,
        alias_generator=AliasGenerator(alias=to_camel),
        validate_by_alias=True,
        validate_by_name=False,
        serialize_by_alias=True,
    )


_QUANTITY_RE = re.compile(
    r"^[+-]?(\d+(\.\d*)?|\.\d+)(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?(\d+(\.\d*)?|\.\d+))?$"
)


def check_quantity(value: str | int) -> str | int:
    """``value`` unchanged; ValueError when a string is no Kubernetes quantity (an int is)."""
    if isinstance(value, str) and not _QUANTITY_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 500m, 2, 4Gi)")
    return value


# A Kubernetes resource quantity: 2, "500m", "4Gi".
Quantity = Annotated[
    int | str,
    WithJsonSchema({"x-kubernetes-int-or-string": True}),
]
