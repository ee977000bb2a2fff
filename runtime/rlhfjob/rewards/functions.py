"""Reward functions over text, called as TRL's ``GRPOTrainer`` calls them, and the older
batch form.

A reward function is TRL-style when its signature names ``prompts`` or ``completions``
or takes ``**kwargs``; it is then called with keyword arguments only:

- ``prompts``: each sample's prompt as the data file holds it (a string, or a list of
  chat messages), else its ``prompt_ids`` decoded (pad and special tokens skipped);
- ``completions``: each response up to its EOS, decoded with the policy's tokenizer
  (special tokens skipped); ``[{"role": "assistant", "content": text}]`` when the
  sample's prompt is chat messages, as TRL gives them;
- ``completion_ids``: each response's token ids up to its EOS (lists of ints);
- ``trainer_state``: a ``TrainerState`` whose ``global_step`` is the module's iteration;
- every other column of the dataset under its own name, a list with one value per
  sample (tensors become lists of numbers).

A function without ``**kwargs`` gets only the keywords it names. It returns one float
per sample, or None where it does not apply (read as NaN). Any other function is the
batch form, ``fn(data) -> (B,)`` on the batch dict of tensors (the sort task's).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = [
    "NOT_COLUMNS",
    "TextBatch",
    "TrainerState",
    "call_reward",
    "import_reward",
    "is_trl_style",
    "text_batch",
]

# Batch fields that are not dataset columns: what prompts and completions are made of,
# and what the ready-made modules add. Reward functions get every other field.
NOT_COLUMNS = frozenset(
    {
        "prompt",
        "prompt_ids",
        "prompt_mask",
        "prompt_text",
        "prompt_source",
        "response_ids",
        "response_mask",
        "old_logprobs",
        "ref_logprobs",
        "values",
        "scores",
        "rewards",
        "advantages",
        "returns",
    }
)


@dataclasses.dataclass(frozen=True)
class TrainerState:
    """What TRL's ``trainer_state`` keyword offers that rlhfjob knows: the step."""

    global_step: int = 0


@dataclasses.dataclass(frozen=True)
class TextBatch:
    """One batch as TRL-style reward functions see it (the module docstring's keywords)."""

    prompts: list[Any]
    completions: list[Any]
    completion_ids: list[list[int]]
    columns: dict[str, list[Any]]
    state: TrainerState

    def __len__(self) -> int:
        return len(self.completions)


def is_trl_style(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` takes TRL's keywords (names ``prompts`` or ``completions``, or has
    ``**kwargs``); False for a callable whose signature cannot be read."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(
        p.kind is inspect.Parameter.VAR_KEYWORD or p.name in ("prompts", "completions")
        for p in params
    )


def import_reward(path: str, *, key: str) -> Callable[..., Any]:
    """``"package.module:function"`` imported; ValueError naming ``key`` (the setting) when
    it cannot be imported or is not callable."""
    module_name, _, attr = path.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"{key}: cannot import {path!r}: {exc}") from exc
    if not callable(fn):
        raise ValueError(f"{key}: {path!r} is a {type(fn).__name__}, not a function")
    return fn


def _rows(value: Any, batch: int) -> list[Any]:
    """A column as one value per sample: tensors as lists of numbers, a lone value
    repeated."""
    if isinstance(value, torch.Tensor) and value.dim() > 0:
        return list(value.tolist())
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value.item() if isinstance(value, torch.Tensor) else value] * batch


def text_batch(data: dict[str, Any], tokenizer: Any, *, step: int = 0) -> TextBatch:
    """``data`` (a batch with ``response_ids`` and ``response_mask`` (B, R)) decoded for
    TRL-style functions; prompts are decoded only where the batch has no ``prompt``.
    Responses are right-padded, so a response is its first ``mask.sum()`` tokens."""
    response, mask = data["response_ids"], data["response_mask"]  # (B, R) each
    batch = response.shape[0]
    ids = [row[: int(n)].tolist() for row, n in zip(response, mask.sum(1), strict=True)]
    texts = [tokenizer.decode(row, skip_special_tokens=True) for row in ids]
    if "prompt" in data:
        prompts = list(data["prompt"])
    else:
        prompt_ids = data["prompt_ids"]  # (B, P)
        prompt_mask = data.get("prompt_mask")
        if prompt_mask is None:
            prompt_mask = torch.ones_like(prompt_ids)  # (B, P)
        prompts = [
            tokenizer.decode(p[m.bool()].tolist(), skip_special_tokens=True)
            for p, m in zip(prompt_ids, prompt_mask, strict=True)
        ]
    completions: list[Any] = [
        t if isinstance(p, str) else [{"role": "assistant", "content": t}]
        for p, t in zip(prompts, texts, strict=True)
    ]
    columns = {k: _rows(v, batch) for k, v in data.items() if k not in NOT_COLUMNS}
    return TextBatch(prompts, completions, ids, columns, TrainerState(global_step=step))


def _keywords(fn: Callable[..., Any], name: str, text: TextBatch) -> dict[str, Any]:
    offered = {  # a column of one of these names gives way, as in TRL
        **text.columns,
        "prompts": text.prompts,
        "completions": text.completions,
        "completion_ids": text.completion_ids,
        "trainer_state": text.state,
    }
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return offered
    missing = [
        n
        for n, p in params.items()
        if n not in offered
        and p.default is inspect.Parameter.empty
        and p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    if missing:
        raise ValueError(
            f"reward function {name!r} needs {', '.join(map(repr, missing))}, which the batch "
            f"lacks; it offers {', '.join(sorted(offered))}"
        )
    return {k: v for k, v in offered.items() if k in params}


def call_reward(
    fn: Callable[..., Any],
    *,
    name: str,
    data: dict[str, Any],
    text: TextBatch | None,
) -> torch.Tensor:
    """``fn``'s scores (B,) as float32, NaN where it returned None.

    ``text`` is None for a batch-form function (``fn(data)``). ValueError names the
    function and both counts when it returns another number of scores than samples.
    """
    batch = data["response_ids"].shape[0]
    if text is None:
        out = torch.as_tensor(fn(data), dtype=torch.float32)
        if out.shape != (batch,):
            raise ValueError(
                f"the reward function {name!r} returned shape {tuple(out.shape)}; it must "
                f"return one score per sample, shape ({batch},)"
            )
        return out
    values = fn(**_keywords(fn, name, text))
    if isinstance(values, torch.Tensor):
        values = values.tolist()
    if not isinstance(values, Sequence) or len(values) != batch:
        count = len(values) if isinstance(values, Sequence) else type(values).__name__
        raise ValueError(
            f"the reward function {name!r} returned {count} scores for {batch} completions; "
            "return a list with one float (or None) per completion"
        )
    return torch.tensor([math.nan if v is None else float(v) for v in values])
