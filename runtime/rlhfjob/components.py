"""Environment, Trainer, Evaluator: the three flows an Engine runs, traced at construction."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from rlhfjob.flow import FlowGraph, trace
from rlhfjob.module import BaseModule

__all__ = ["Environment", "Evaluator", "Trainer", "metrics_of"]


class _Component:
    """A traced flow; traced at construction so a bad flow fails before any model runs."""

    def __init__(self, flow: Callable[[Any], Any]) -> None:
        self.flow = flow
        self.graph: FlowGraph = trace(flow)

    @property
    def modules(self) -> list[BaseModule]:
        return self.graph.modules


class Environment(_Component):
    """The env flow: inference models that turn prompts into training samples."""


class Trainer(_Component):
    """The trainer flow: trained models, each called with one global batch."""


class Evaluator(_Component):
    """The eval flow over its own dataset, reduced to metrics by ``post_process``."""

    def __init__(self, flow: Callable[[Any], Any]) -> None:
        super().__init__(flow)
        self.dataset: list[Any] | None = None
        self._post_process: PostProcess | None = None

    def set_dataset(self, dataset: Sequence[Any]) -> Evaluator:
        self.dataset = list(dataset)
        if not self.dataset:
            raise ValueError("Evaluator.set_dataset got an empty dataset")
        return self

    def set_post_process_func(self, fn: PostProcess) -> Evaluator:
        """ChatLearn's hook: ``fn(results, eval_info)`` replaces ``post_process``."""
        self._post_process = fn
        return self

    def post_process(self, results: dict[str, list[Any]], eval_info: dict[str, Any]) -> Any:
        """What ``engine.eval()`` returns; called as ChatLearn calls it.

        ``results`` maps the name of each model whose output the eval flow returns
        to that output's batches, in order (two outputs of one model share its
        list); ``eval_info`` has ``episode_iteration`` and ``train_iteration``. The
        default returns ``results``, as ChatLearn's does. Override it, or use
        ``set_post_process_func``; the episode loop reports what it returns through
        :func:`metrics_of`.
        """
        if self._post_process is not None:
            return self._post_process(results, eval_info)
        return results


PostProcess = Callable[[dict[str, list[Any]], dict[str, Any]], Any]


def metrics_of(processed: Any) -> dict[str, float]:
    """The ``eval/<key>`` metrics of what ``post_process`` returned, when a mapping:

    - a number (bools excluded) or a one-element tensor is a metric of that key;
    - a list is a model's batches (the default ``post_process`` returns them): the
      mean over all samples of each numeric tensor key, named ``<key>`` when it is
      the only list and ``<model>/<key>`` otherwise (lists, strings and non-numeric
      tensors inside the batches are skipped).

    Anything else (None, a string, other values in the mapping) reports nothing.
    """
    if not isinstance(processed, Mapping):
        return {}
    lists = [key for key, value in processed.items() if isinstance(value, list)]
    metrics: dict[str, float] = {}
    for key, value in processed.items():
        if isinstance(value, list):
            prefix = f"{key}/" if len(lists) > 1 else ""
            metrics.update({f"{prefix}{k}": v for k, v in _means(value).items()})
        elif _scalar(value):
            metrics[str(key)] = float(value)
    return metrics


def _scalar(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.numel() == 1
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _means(batches: list[Any]) -> dict[str, float]:
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for batch in batches:
        if not isinstance(batch, dict):
            continue
        for key, value in batch.items():
            if not isinstance(value, torch.Tensor) or not value.numel():
                continue
            if value.dtype != torch.bool and not value.dtype.is_complex:
                sums[key] = sums.get(key, 0.0) + float(value.double().sum())
                counts[key] = counts.get(key, 0) + value.numel()
    return {key: sums[key] / counts[key] for key in sums}
