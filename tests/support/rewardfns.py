"""Reward functions that tests name by "rewardfns:<name>", as a job names a user's.

``record`` keeps every call's keywords in ``CALLS``; the others each show one thing
the caller must handle.
"""

from __future__ import annotations

from typing import Any

CALLS: list[dict[str, Any]] = []


def _text(completion: Any) -> str:
    return completion if isinstance(completion, str) else completion[0]["content"]


def record(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
    """The completion's length in characters; the call's keywords kept in CALLS."""
    CALLS.append({"prompts": prompts, "completions": completions, **kwargs})
    return [float(len(_text(c))) for c in completions]


def digit_share(completions: list[Any], **kwargs: Any) -> list[float]:
    """The share of a completion's characters that are digits: random responses differ."""
    return [sum(ch.isdigit() for ch in _text(c)) / max(len(_text(c)), 1) for c in completions]


def ones(completions: list[Any], **kwargs: Any) -> list[float]:
    return [1.0] * len(completions)


def none_for_first(completions: list[Any], **kwargs: Any) -> list[float | None]:
    """None (not applicable) for the first completion, 4.0 for the others."""
    return [None] + [4.0] * (len(completions) - 1)


def only_named(completions: list[Any], answer: list[Any]) -> list[float]:
    """No **kwargs: gets only what it names."""
    CALLS.append({"completions": completions, "answer": answer})
    return [0.0] * len(completions)


def needs_solution(completions: list[Any], solution: list[Any]) -> list[float]:
    return [0.0] * len(completions)


def too_few(completions: list[Any], **kwargs: Any) -> list[float]:
    return [0.0]


NOT_A_FUNCTION = 3
