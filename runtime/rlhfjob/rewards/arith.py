"""A verifier for arithmetic answers, TRL-style: ``exact_answer(completions, answer)``.

models.reward.args.reward_fn: rlhfjob.rewards.arith:exact_answer
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["exact_answer", "last_number"]

# An optional sign, digits with optional thousands commas, an optional fraction.
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def last_number(text: str) -> float | None:
    """The last number written in ``text`` ("so 1,234." -> 1234.0); None when there is none."""
    found = _NUMBER.findall(text)
    return float(found[-1].replace(",", "")) if found else None


def exact_answer(completions: list[Any], answer: list[Any], **kwargs: Any) -> list[float | None]:
    """1.0 where the completion's last number equals its answer's, else 0.0.

    A completion is text or chat messages (TRL's ``[{"role": "assistant", "content": ...}]``;
    the last message is read). An answer is a number or text whose last number counts
    (``"5"``, ``"#### 72"``); an answer with no number gives None (not applicable).
    A completion with no number scores 0.0.
    """
    scores: list[float | None] = []
    for completion, expected in zip(completions, answer, strict=True):
        text = completion if isinstance(completion, str) else str(completion[-1]["content"])
        target = float(expected) if isinstance(expected, (int, float)) else None
        if target is None:
            target = last_number(str(expected))
        if target is None:
            scores.append(None)
            continue
        scores.append(1.0 if last_number(text) == target else 0.0)
    return scores
