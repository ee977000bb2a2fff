"""Environment, Trainer, Evaluator: the three flows an Engine runs, traced at construction."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from rlhfjob.flow import FlowGraph, trace
from rlhfjob.module import BaseModule

__all__ = ["Environment", "Evaluator", "Trainer"]


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
        self._post_process: Callable[[list[Any], dict[str, Any]], dict[str, float]] | None = None

    def set_dataset(self, dataset: Sequence[Any]) -> Evaluator:
        self.dataset = list(dataset)
        if not self.dataset:
            raise ValueError("Evaluator.set_dataset got an empty dataset")
        return self

    def set_post_process_func(
        self, fn: Callable[[list[Any], dict[str, Any]], dict[str, float]]
    ) -> Evaluator:
        """ChatLearn's hook: ``fn(results, eval_info) -> metrics`` replaces ``post_process``."""
        self._post_process = fn
        return self

    def post_process(self, results: list[Any], eval_info: dict[str, Any]) -> dict[str, float]:
        """Reduce the eval flow's per-batch outputs to metrics.

        Default: the mean over all samples of every numeric tensor key. Lists,
        strings and non-numeric tensors are skipped. Override, or use
        ``set_post_process_func``, for anything else.
        """
        if self._post_process is not None:
            return self._post_process(results, eval_info)
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for batch in results:
            if not isinstance(batch, dict):
                continue
            for key, value in batch.items():
                if not isinstance(value, torch.Tensor) or not value.numel():
                    continue
                if value.dtype != torch.bool and not value.dtype.is_complex:
                    sums[key] = sums.get(key, 0.0) + float(value.double().sum())
                    counts[key] = counts.get(key, 0) + value.numel()
        return {key: sums[key] / counts[key] for key in sums}
