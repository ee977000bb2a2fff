"""What the PPO and GRPO modules share: building models from their settings, assembling
sequences, the trainers' memory and precision settings, and metric accumulation.

Every module builds its own model from its settings alone (``ModelConfig``: a
local Hugging Face ``model_path``, or the small GPT from ``gpt`` and
``init_seed``, then ``weights_path`` and a ``warmup``), so the same code runs
when each module lives in a separate worker process.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlhfjob.algorithms.configs import ModelConfig, TrainerConfig
from rlhfjob.algorithms.tasks import supervised_warmup
from rlhfjob.models import DTYPES, GPT, HFCausalLM, ValueModel, load_hf_causal_lm

__all__ = [
    "Metrics",
    "build_lm",
    "build_value_model",
    "enable_gradient_checkpointing",
    "forward_precision",
    "optimizer_for",
    "sequence",
]

# Warmed-up weights per model config, computed once per process: the warm-up is
# a pure function of the config, and policy, reference, trainer and value all
# ask for it. Each worker process computes its own, so nothing is shared.
_WARM_CACHE: dict[str, dict[str, torch.Tensor]] = {}


def build_lm(config: ModelConfig) -> nn.Module:
    """The language model of ``config`` (validated already: it names a model).

    Raises ValueError naming a ``model_path`` or ``weights_path`` that does not
    exist: paths are checked here, on the worker that mounts them, not on the
    driver.
    """
    if config.model_path is not None:
        model: nn.Module = load_hf_causal_lm(config.model_path, dtype=config.dtype)
    else:
        # A private RNG stream: the same init_seed gives the same weights in every
        # module, and the engine's global RNG stream is not consumed.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.init_seed)
            model = GPT(config.gpt_config())
    if config.weights_path is not None:
        path = Path(config.weights_path)
        if not path.is_file():
            raise ValueError(f"weights_path {str(path)!r} does not exist")
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    if config.warmup is not None and config.warmup.steps > 0:
        _warm_up(model, config)
    if config.model_path is None:
        # The small GPT is made, loaded and warmed up in float32, then cast: the same
        # weights as a float32 twin's, rounded once.
        model.to(DTYPES[config.dtype])
    return model


def _warm_up(model: nn.Module, config: ModelConfig) -> None:
    warm, task = config.warmup, config.task
    assert warm is not None and task is not None, "ModelConfig.validate() checks both"
    # The model's keys only: a trainer and its inference twin share the result.
    model_keys = {f.name: getattr(config, f.name) for f in dataclasses.fields(ModelConfig)}
    key = json.dumps(model_keys, sort_keys=True, default=repr)
    if key not in _WARM_CACHE:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(warm.seed)
            supervised_warmup(
                model,
                task,
                steps=warm.steps,
                batch_size=warm.batch_size,
                lr=warm.lr,
                seed=warm.seed,
            )
        _WARM_CACHE[key] = copy.deepcopy(model.state_dict())
    model.load_state_dict(_WARM_CACHE[key])


def build_value_model(config: ModelConfig) -> ValueModel:
    """A value model whose backbone is ``build_lm(config)`` (so it can start from the
    warmed-up policy, as RLHF critics start from the SFT or reward model)."""
    return ValueModel(build_lm(config))


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


def enable_gradient_checkpointing(model: nn.Module, *, name: str) -> None:
    """Recompute ``model``'s transformer blocks in the backward pass (a value model's
    backbone's). Raises ValueError naming ``models.<name>.args.gradient_checkpointing``
    when the model cannot: a Hugging Face class without support, or another model."""
    lm = model.backbone if isinstance(model, ValueModel) else model
    key = f"models.{name}.args.gradient_checkpointing"
    if isinstance(lm, GPT):
        lm.gradient_checkpointing = True
    elif isinstance(lm, HFCausalLM):
        try:
            lm.enable_gradient_checkpointing()
        except ValueError as exc:
            raise ValueError(f"{key}: {exc}; set it to false") from None
    else:
        raise ValueError(
            f"{key}: {type(lm).__name__} is neither the small GPT nor a Hugging Face model, "
            "so it cannot be checkpointed here; set it to false"
        )


@contextlib.contextmanager
def forward_precision(model: nn.Module, config: TrainerConfig) -> Iterator[None]:
    """The trainer's forward pass: under bf16 autocast on the model's device with
    ``mixed_precision: bf16`` (weights and gradients stay float32), else as it is."""
    enabled = config.mixed_precision == "bf16"
    device = next(model.parameters()).device.type
    with torch.autocast(device, dtype=torch.bfloat16, enabled=enabled):
        yield


def optimizer_for(model: nn.Module, config: TrainerConfig) -> torch.optim.Optimizer:
    """AdamW with the trainer's ``lr``, ``weight_decay`` and ``betas``."""
    return torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay, betas=config.betas
    )
