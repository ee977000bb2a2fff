"""Cross-field rules, each written once for both validators.

A :class:`Rule` holds the CEL expression and message that the CRD gives the
API server (``x-kubernetes-validations``) and the Python predicate that
pydantic runs after a model is validated. A model lists its rules in
``rules``; :class:`Ruled` turns them into the model's CRD validations and
checks them, in that order, on every validation.

The two sides see the same object differently, and a rule is written for
both views:

- CEL sees the object as the API server stores it: camelCase keys for the
  Kubernetes-facing models, ChatLearn's snake_case under ``runtime`` and
  ``models``, and no defaults (the CRD carries none, so :func:`cel_or` spells
  each default out). A null of a non-nullable field is pruned before the rules
  run, so null and absent are the same.
- ``holds`` sees the validated pydantic object, with defaults filled in.

tests/unit/operator/test_spec_rules.py evaluates both sides of every rule on
generated objects and fails where they disagree.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic.config import JsonDict

__all__ = ["IMMUTABLE", "Rule", "Ruled", "cel_or", "immutable", "transition"]

# Contravariant: a rule over any object with runtime and models is a rule over JobConfig.
M = TypeVar("M", contravariant=True)


@dataclass(frozen=True, kw_only=True)
class Rule(Generic[M]):
    """One rule: ``cel`` and ``message`` for the API server, ``holds`` for pydantic.

    ``holds`` is None for a transition rule (one that reads ``oldSelf``): pydantic
    sees one object, never its previous version, so only the API server checks it.
    ``explain`` gives pydantic's message, which can name the offending values;
    when None, pydantic says ``message`` as the API server does. ``field_path``
    (".train_global_batch_size") is where the API server reports the rule.
    """

    cel: str
    message: str
    holds: Callable[[M], bool] | None
    explain: Callable[[M], str] | None = None
    field_path: str | None = None

    def validation(self) -> JsonDict:
        """The rule's ``x-kubernetes-validations`` entry."""
        entry: JsonDict = {"rule": self.cel, "message": self.message}
        if self.field_path:
            entry["fieldPath"] = self.field_path
        return entry

    def check(self, obj: M) -> None:
        """Raise ValueError (pydantic's message) when ``obj`` breaks the rule."""
        if self.holds is not None and not self.holds(obj):
            raise ValueError(self.explain(obj) if self.explain else self.message)


def cel_or(obj: str, field: str, default: object) -> str:
    """CEL for ``obj.field`` or its pydantic default: the CRD carries no defaults."""
    return f"(has({obj}.{field}) ? {obj}.{field} : {default})"


IMMUTABLE = "self == oldSelf"


def transition(cel: str, message: str, *, field_path: str | None = None) -> Rule[Any]:
    """A rule only the API server checks: it compares the object with ``oldSelf``."""
    return Rule(cel=cel, message=message, holds=None, field_path=field_path)


def immutable(field: str) -> JsonDict:
    """``json_schema_extra`` of a spec field that an update may not change.

    Transition rules on a field run only when the field is in both the old and
    the new object; adding or removing an optional one needs a rule on the
    parent (RLHFJobSpec's ``has(self.x) == has(oldSelf.x)``).
    """
    rule = transition(IMMUTABLE, f"spec.{field} is immutable; delete and re-create the job")
    return {"x-kubernetes-validations": [rule.validation()]}


def _add_validations(schema: dict[str, Any], cls: type[BaseModel]) -> None:
    rules: tuple[Rule[Any], ...] = getattr(cls, "rules", ())
    if rules:
        schema["x-kubernetes-validations"] = [rule.validation() for rule in rules]


class Ruled(BaseModel):
    """A model whose ``rules`` become its CRD validations and its after-validation checks.

    Subclass validators run after the rules. ``rules`` may be assigned after the
    class statement when a rule's CEL needs the class's own field defaults.
    """

    model_config = ConfigDict(json_schema_extra=_add_validations)

    rules: ClassVar[tuple[Rule[Any], ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self) -> Ruled:
        for rule in self.rules:
            rule.check(self)
        return self
