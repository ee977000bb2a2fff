"""One reward module's sources (reward functions, then a reward model) weighted into a
score per sample.

Each source gives a column of scores (B,), NaN where a TRL-style function returned
None; the score is the weighted sum of the columns with NaN counted as 0 (TRL's
``nansum``), so a sample every source skips scores 0. Each named source also reports
the mean of its column over the samples it scored (``<name>_mean``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from rlhfjob.rewards.functions import call_reward, import_reward, is_trl_style, text_batch
from rlhfjob.rewards.model import RewardModel
from rlhfjob.text import load_tokenizer

__all__ = ["Scorer", "build_scorer"]

# The module's own metric of the weighted score is reward_mean: no source may take it.
_TAKEN = frozenset({"reward"})


class Scorer:
    """``scorer(data, step=i) -> (scores (B,), {"<name>_mean": float})``.

    ``fns`` are (name, function) pairs, each TRL-style or the batch form
    (``is_trl_style``); ``model`` scores after them; ``weights`` has one per source
    (functions first). ``tokenizer`` decodes responses for TRL-style functions and
    the model; ``named`` False reports no per-source means (the task's reward).
    """

    def __init__(
        self,
        fns: Sequence[tuple[str, Callable[..., Any]]],
        *,
        weights: Sequence[float],
        model: RewardModel | None = None,
        tokenizer: Any = None,
        named: bool = True,
    ) -> None:
        assert len(weights) == len(fns) + (model is not None), "build_scorer checks"
        self.fns = [(name, fn, is_trl_style(fn)) for name, fn in fns]
        self.model, self.tokenizer, self.named = model, tokenizer, named
        self.weights = torch.tensor(weights, dtype=torch.float32)  # (F,)
        names = [name for name, _ in fns] + ([model.name] if model is not None else [])
        self.names = _unique(names)

    def needs_text(self) -> bool:
        return self.model is not None or any(trl for _, _, trl in self.fns)

    def __call__(
        self, data: dict[str, Any], *, step: int = 0
    ) -> tuple[torch.Tensor, dict[str, float]]:
        text = text_batch(data, self.tokenizer, step=step) if self.needs_text() else None
        columns = [
            call_reward(fn, name=name, data=data, text=text if trl else None)
            for name, fn, trl in self.fns
        ]
        if self.model is not None:
            assert text is not None
            columns.append(self.model(text.prompts, text.completions))
        table = torch.stack(columns, dim=1)  # (B, F)
        scores = (table * self.weights).nansum(dim=1)  # (B,)
        means: dict[str, float] = {}
        if self.named:
            for name, column in zip(self.names, table.unbind(1), strict=True):
                if not column.isnan().all():
                    means[f"{name}_mean"] = float(column.nanmean())
        return scores, means


def _unique(names: list[str]) -> list[str]:
    """Names as given, a repeated one (or ``reward``) suffixed with its 1-based position."""
    return [f"{n}_{i + 1}" if n in _TAKEN or names.count(n) > 1 else n for i, n in enumerate(names)]


def _name(fn: Callable[..., Any]) -> str:
    return str(getattr(fn, "__name__", type(fn).__name__))


def build_scorer(
    module: str,
    *,
    reward_fn: Callable[..., Any] | None = None,
    paths: Sequence[str] = (),
    weights: Sequence[float] | None = None,
    model_path: str | None = None,
    tokenizer_path: str | None = None,
    task_reward: Callable[..., Any] | None = None,
) -> Scorer:
    """The scorer of ``models.<module>.args``: the constructor's ``reward_fn``, else the
    functions at ``paths`` (``reward_fn``), then the model at ``model_path``; with neither,
    ``task_reward``.

    ValueError names the setting: a function that cannot be imported, weights of another
    count than the sources, no reward at all, and text rewards without ``tokenizer_path``.
    """
    where = f"models.{module}.args"
    if reward_fn is not None:
        fns = [(_name(reward_fn), reward_fn)]
    else:
        fns = [
            (_name(fn), fn)
            for i, p in enumerate(paths)
            for fn in [import_reward(p, key=f"{where}.reward_fn" + (f"[{i}]" if i else ""))]
        ]
    model = RewardModel(model_path, key=f"{where}.reward_model_path") if model_path else None
    sources = len(fns) + (model is not None)
    if sources == 0:
        if task_reward is None:
            raise ValueError(
                f"RewardInference({module!r}) has no reward function: pass reward_fn=..., or "
                f"set {where}.reward_fn, .reward_model_path or .task"
            )
        return Scorer([("reward", task_reward)], weights=[1.0], named=False)
    if weights is None:
        weights = [1.0] * sources
    if len(weights) != sources:
        raise ValueError(
            f"{where}.reward_weights has {len(weights)} weights for {sources} rewards "
            f"({len(fns)} reward_fn, {int(model is not None)} reward_model_path); give one "
            "weight per reward function, then one for the reward model"
        )
    scorer = Scorer(fns, weights=weights, model=model)
    if scorer.needs_text():
        if tokenizer_path is None:
            raise ValueError(
                f"{where}.tokenizer_path is needed to decode responses for rewards over text: "
                "set it to the policy's model_path (its tokenizer)"
            )
        scorer.tokenizer = load_tokenizer(tokenizer_path, key=f"{where}.tokenizer_path")
    return scorer
