"""What the PPO and GRPO modules share: building models from ``model_args``,
reading hyperparameters, assembling sequences, and metric accumulation.

Every module builds its own model from its config alone (no Python object is
shared between modules), so the same code runs when each module lives in a
separate worker process. Keys of ``model_args`` understood here:

- ``model_path``: a local Hugging Face causal LM directory; otherwise
- ``gpt``: a ``GPTConfig`` dict for the small GPT (``vocab_size`` defaults to
  the task's), initialised from ``init_seed`` (default 0) so that every module
  with the same config starts from the same weights;
- ``weights_path``: a ``torch.save``d state dict loaded on top;
- ``warmup``: ``{"steps", "batch_size", "lr", "seed"}`` for a supervised
  warm-up on the task (see ``tasks.supervised_warmup``);
- ``task``: the task config (see ``tasks.get_task``).
"""

from __future__ import annotations

import copy
import importlib
import json
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlhfjob.algorithms.tasks import SortTask, get_task, supervised_warmup
from rlhfjob.models import GPT, GPTConfig, ValueModel, load_hf_causal_lm

__all__ = [
    "Metrics",
    "build_lm",
    "build_value_model",
    "import_object",
    "sequence",
    "task_from_args",
]

_MODEL_KEYS = ("model_path", "dtype", "gpt", "init_seed", "weights_path", "warmup", "task")

# Warmed-up weights per model config, computed once per process: the warm-up is
# a pure function of the config, and policy, reference, trainer and value all
# ask for it. Each worker process computes its own, so nothing is shared.
_WARM_CACHE: dict[str, dict[str, torch.Tensor]] = {}


def task_from_args(args: dict[str, Any]) -> SortTask | None:
    """The task named by ``args["task"]``, or None when the config has none."""
    return get_task(args["task"]) if "task" in args else None


def build_lm(args: dict[str, Any]) -> nn.Module:
    """The language model described by ``args`` (see the module docstring).

    Raises ValueError when neither ``model_path`` nor ``gpt`` is given, when a
    path does not exist (naming it), or when ``warmup`` is asked without a
    ``task``.
    """
    if "model_path" in args:
        model: nn.Module = load_hf_causal_lm(args["model_path"], dtype=args.get("dtype", "float32"))
    elif "gpt" in args:
        config = dict(args["gpt"])
        task = task_from_args(args)
        if "vocab_size" not in config:
            if task is None:
                raise ValueError("model_args.gpt needs vocab_size when there is no task")
            config["vocab_size"] = task.vocab_size
        # A private RNG stream: the same init_seed gives the same weights in every
        # module, and the engine's global RNG stream is not consumed.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(args.get("init_seed", 0)))
            model = GPT(GPTConfig.from_dict(config))
    else:
        raise ValueError(
            "model_args must name a model: 'model_path' (a local Hugging Face model "
            "directory) or 'gpt' (a GPTConfig dict for the small GPT)"
        )
    if "weights_path" in args:
        path = Path(args["weights_path"])
        if not path.is_file():
            raise ValueError(f"weights_path {str(path)!r} does not exist")
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    if args.get("warmup"):
        _warm_up(model, args)
    return model


def _warm_up(model: nn.Module, args: dict[str, Any]) -> None:
    task = task_from_args(args)
    if task is None:
        raise ValueError("model_args.warmup needs a 'task' to warm up on")
    warm = dict(args["warmup"])
    unknown = sorted(set(warm) - {"steps", "batch_size", "lr", "seed"})
    if unknown:
        raise ValueError(f"unknown model_args.warmup key(s) {unknown}")
    key = json.dumps({k: args.get(k) for k in _MODEL_KEYS}, sort_keys=True, default=str)
    if key not in _WARM_CACHE:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(warm.get("seed", 0)))
            supervised_warmup(
                model,
                task,
                steps=int(warm.get("steps", 0)),
                batch_size=int(warm.get("batch_size", 64)),
                lr=float(warm.get("lr", 3e-3)),
                seed=int(warm.get("seed", 0)),
            )
        _WARM_CACHE[key] = copy.deepcopy(model.state_dict())
    model.load_state_dict(_WARM_CACHE[key])


def build_value_model(args: dict[str, Any]) -> ValueModel:
    """A value model whose backbone is ``build_lm(args)`` (so it can start from the
    warmed-up policy, as RLHF critics start from the SFT or reward model)."""
    return ValueModel(build_lm(args))


def import_object(path: str) -> Any:
    """``"package.module:attr"`` -> the object; a bad path is a ValueError naming it."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"{path!r} is not of the form 'package.module:attribute'")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot import {path!r}: {exc}") from exc


def sequence(data: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Prompt and response joined: (input_ids (B, P+R), attention_mask (B, P+R), R)."""
    prompt, response = data["prompt_ids"], data["response_ids"]
    prompt_mask = data.get("prompt_mask")
    if prompt_mask is None:
        prompt_mask = torch.ones_like(prompt)
    ids = torch.cat([prompt, response], dim=1)  # (B, P+R)
    mask = torch.cat([prompt_mask, data["response_mask"]], dim=1)  # (B, P+R)
    return ids, mask, response.shape[1]


class Metrics:
    """Scalar metrics of one module, averaged over the steps since the last ``pop``."""

    def __init__(self) -> None:
        self._values: dict[str, list[float]] = defaultdict(list)
        self._reducers: dict[str, Callable[[list[float]], float]] = {}

    def add(self, name: str, value: float | torch.Tensor, reduce: str = "mean") -> None:
        """Record ``value``; ``reduce`` ("mean", "min", "max") combines the values."""
        self._values[name].append(float(value))
        self._reducers[name] = _REDUCERS[reduce]

    def pop(self) -> dict[str, float]:
        out = {name: self._reducers[name](vals) for name, vals in self._values.items() if vals}
        self._values.clear()
        return out


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _min(values: list[float]) -> float:
    return min(values)


def _max(values: list[float]) -> float:
    return max(values)


_REDUCERS: dict[str, Callable[[list[float]], float]] = {"mean": _mean, "min": _min, "max": _max}


def optimizer_for(
    model: nn.Module, args: dict[str, Any], *, default_lr: float
) -> torch.optim.Optimizer:
    """Adam(W) with ``lr``, ``weight_decay`` (0), ``betas`` ([0.9, 0.95]) from ``args``."""
    return torch.optim.AdamW(
        model.parameters(),
        lr=float(args.get("lr", default_lr)),
        weight_decay=float(args.get("weight_decay", 0.0)),
        betas=tuple(args.get("betas", (0.9, 0.95))),
    )
