"""Layering pod settings: ``spec.podTemplate`` under a role's ``driver`` / ``models.<name>.pod``.

:func:`merge_pod_settings` is the one place that says how a later layer
overrides an earlier one:

- scalars (image, serviceAccountName, priorityClassName, and affinity, which is
  taken whole) : the later layer's value when it sets one;
- maps (nodeSelector, labels, annotations, resources.requests, resources.limits):
  key-wise, the later layer's value for a key wins;
- lists of named items, keyed by ``name`` (env, volumes, imagePullSecrets) or
  by ``mountPath`` (volumeMounts, whose names may repeat with subPaths): an item
  whose key is already there replaces it in place, a new one is appended (within
  one layer too: the last item of a key wins, at the first one's place);
- lists of unnamed items (tolerations, envFrom): the union, in order, exact
  duplicates dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel

from rlhfjob_operator.spec.pod import PodSettings, ResourceRequirements

__all__ = ["merge_pod_settings"]

T = TypeVar("T", bound=BaseModel)

_SCALARS = ("image", "service_account_name", "priority_class_name", "affinity")
_MAPS = ("node_selector", "labels", "annotations")
_KEYED: dict[str, Callable[[Any], str]] = {
    "env": lambda item: item.name,
    "volumes": lambda item: item.name,
    "image_pull_secrets": lambda item: item.name,
    "volume_mounts": lambda item: item.mount_path,
}
_UNNAMED = ("tolerations", "env_from")


def _by_key(lists: Sequence[Sequence[T]], key: Callable[[T], str]) -> list[T]:
    out: dict[str, T] = {}
    for items in lists:
        for item in items:
            out[key(item)] = item  # dicts keep the first insertion's place
    return list(out.values())


def _union(lists: Sequence[Sequence[T]]) -> list[T]:
    out: list[T] = []
    for items in lists:
        out.extend(item for item in items if item not in out)
    return out


def merge_pod_settings(*layers: PodSettings | None) -> PodSettings:
    """``layers`` merged, each over the ones before it; None layers are skipped.

    No layers (or only None) gives the empty PodSettings. The result is
    validated again, so it keeps every rule of PodSettings.
    """
    given = [layer for layer in layers if layer is not None]
    merged: dict[str, Any] = {}
    for field in _SCALARS:
        values = [getattr(layer, field) for layer in given if getattr(layer, field) is not None]
        merged[field] = values[-1] if values else None
    for field in _MAPS:
        merged[field] = {k: v for layer in given for k, v in getattr(layer, field).items()}
    for field, key in _KEYED.items():
        merged[field] = _by_key([getattr(layer, field) for layer in given], key)
    for field in _UNNAMED:
        merged[field] = _union([getattr(layer, field) for layer in given])
    resources = [layer.resources for layer in given if layer.resources is not None]
    if resources:
        merged["resources"] = ResourceRequirements.model_validate(
            {
                "requests": {k: v for r in resources for k, v in r.requests.items()},
                "limits": {k: v for r in resources for k, v in r.limits.items()},
            }
        )
    dumped = PodSettings.model_construct(**merged).model_dump(mode="json", exclude_none=True)
    return PodSettings.model_validate(dumped)
