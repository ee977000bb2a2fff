"""``runPolicy.failurePolicy``: what a failed or disrupted pod does to the job.

Shaped as the batch Job's ``podFailurePolicy``: the rules are tried in order and the
first that matches the pod decides; a rule matches on the pod's exit code
(``onExitCodes``: ``In`` or ``NotIn`` a list, for one role if ``role`` is given) or on
its conditions (``onPodConditions``: any pattern whose type has that status). The
actions:

- ``FailJob``: the job is Failed at once (reason ``FailurePolicy``);
- ``Restart``: the gang restarts after the backoff, spending one of
  ``runPolicy.backoffLimit``;
- ``RestartNotCounting``: the gang restarts at once, spending nothing (a disruption).

When no rule of the job matches, :data:`DEFAULT_RULES` do, in this order: a pod with
``DisruptionTarget=True`` (a drain, an eviction, a scheduler's or Kueue's preemption)
restarts uncounted; exit 78 (a permanent error) fails the job; exit 79 (the driver
stopped with an emergency checkpoint) restarts uncounted; anything else restarts
counted (:data:`FALLBACK`). So a job's rules only add exceptions to these defaults.

Which pod is matched: the failed pod that speaks for its generation
(``kube/rootcause.py``), or, for a disruption, the first disrupted pod by name. A
pod taken away without a condition (deleted by hand, gone) has no exit code and no
condition to match, and restarts uncounted. ``rlhfjob run`` has processes, not
pods: it matches exit-code rules only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence
from typing import Annotated, ClassVar, Literal

from pydantic import Field

from rlhfjob_operator.contract import EXIT_DISRUPTED, EXIT_PERMANENT, Backoff, Final, Retry
from rlhfjob_operator.spec.base import KubeModel
from rlhfjob_operator.spec.rules import Rule

__all__ = [
    "DEFAULT_RULES",
    "FALLBACK",
    "Action",
    "ExitCodes",
    "FailurePolicy",
    "FailureRule",
    "Match",
    "PodConditionPattern",
    "attempt",
    "first_match",
]

Action = Literal["FailJob", "Restart", "RestartNotCounting"]
FALLBACK: Action = "Restart"

_ONE_OF = "set exactly one of onExitCodes or onPodConditions"
_NO_ZERO = "onExitCodes with operator In must not list 0 (exit 0 is success)"


class ExitCodes(KubeModel):
    """The pod's exit code (its first failed container's) ``In`` or ``NotIn`` ``values``."""

    operator: Literal["In", "NotIn"]
    values: list[Annotated[int, Field(ge=0, le=255)]] = Field(
        min_length=1, max_length=255, description="Exit codes, 0 to 255."
    )
    role: str | None = Field(
        None,
        min_length=1,
        max_length=63,
        description="Only pods of this role: 'driver' or a model name (a colocated pod "
        "matches each of its models).",
    )

    rules: ClassVar[tuple[Rule[ExitCodes], ...]] = (
        Rule(
            cel="self.operator != 'In' || !(0 in self.values)",
            message=_NO_ZERO,
            holds=lambda e: e.operator != "In" or 0 not in e.values,
        ),
    )


class PodConditionPattern(KubeModel):
    """A pod condition: its ``type`` with ``status`` (True unless given)."""

    type: str = Field(min_length=1, max_length=316)
    status: Literal["True", "False", "Unknown"] = "True"


class FailureRule(KubeModel):
    """One rule: what to do (``action``) with a pod that matches."""

    action: Action
    on_exit_codes: ExitCodes | None = None
    on_pod_conditions: list[PodConditionPattern] | None = Field(None, min_length=1, max_length=20)

    rules: ClassVar[tuple[Rule[FailureRule], ...]] = (
        Rule(
            cel="has(self.onExitCodes) != has(self.onPodConditions)",
            message=f"a failurePolicy rule: {_ONE_OF}",
            holds=lambda r: (r.on_exit_codes is None) != (r.on_pod_conditions is None),
        ),
    )


class FailurePolicy(KubeModel):
    """The job's own rules, tried before :data:`DEFAULT_RULES`."""

    # Not ``rules``: that name is the model's own validation rules (Ruled).
    rule_list: list[FailureRule] = Field(
        default_factory=list, max_length=20, alias="rules", description="Tried in order."
    )


DEFAULT_RULES: tuple[FailureRule, ...] = tuple(
    FailureRule.model_validate(rule)
    for rule in (
        {"action": "RestartNotCounting", "onPodConditions": [{"type": "DisruptionTarget"}]},
        {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [EXIT_PERMANENT]}},
        {
            "action": "RestartNotCounting",
            "onExitCodes": {"operator": "In", "values": [EXIT_DISRUPTED]},
        },
    )
)


@dataclasses.dataclass(frozen=True)
class Match:
    """Which rule decided: ``index`` from 1 in the job's rules, or None for a default
    (``rule`` None: :data:`FALLBACK`, no rule matched)."""

    action: Action
    index: int | None
    rule: FailureRule | None

    def describe(self) -> str:
        if self.index is None:
            return f"{self.action} by default"
        return f"{self.action} by runPolicy.failurePolicy.rules[{self.index - 1}]"


def _matches(
    rule: FailureRule, *, names: Collection[str], code: int | None, conditions: Mapping[str, str]
) -> bool:
    if rule.on_exit_codes is not None:
        req = rule.on_exit_codes
        if code is None or (req.role is not None and req.role not in names):
            return False
        return (code in req.values) == (req.operator == "In")
    patterns = rule.on_pod_conditions or []
    return any(conditions.get(p.type) == p.status for p in patterns)


def first_match(
    rules: Sequence[FailureRule],
    *,
    names: Collection[str],
    code: int | None,
    conditions: Mapping[str, str],
) -> Match:
    """The action for a pod: the first of ``rules`` (the job's), then of
    :data:`DEFAULT_RULES`, that matches, else :data:`FALLBACK`. ``names``: the pod's role
    and the models it hosts; ``code``: its exit code (None: it did not exit, or failed
    without one); ``conditions``: its condition types and their statuses."""
    for index, rule in enumerate(rules, 1):
        if _matches(rule, names=names, code=code, conditions=conditions):
            return Match(action=rule.action, index=index, rule=rule)
    for rule in DEFAULT_RULES:
        if _matches(rule, names=names, code=code, conditions=conditions):
            return Match(action=rule.action, index=None, rule=rule)
    return Match(action=FALLBACK, index=None, rule=None)


def attempt(match: Match, *, restarts: int, limit: int, backoff: Backoff) -> Retry | Final:
    """What a launcher does after a gang failed, given the failure policy's ``match``
    and the ``restarts`` counted so far of ``limit`` (runPolicy.backoffLimit)."""
    if match.action == "FailJob":
        if match.index is None:  # the default FailJob rule: exit 78
            why = f"exit code {EXIT_PERMANENT} means a restart cannot fix it"
            return Final("PermanentError", why)
        return Final("FailurePolicy", f"{match.describe()} matched")
    if match.action == "RestartNotCounting":
        return Retry(0.0, counted=False)
    if restarts >= limit:
        return Final("BackoffLimitExceeded", f"runPolicy.backoffLimit ({limit}) restarts spent")
    return Retry(backoff.delay(restarts + 1))
