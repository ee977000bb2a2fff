"""The ready-made engines (rlhfjob.algorithms.engines), in process on the sort task.

``GRPOEngine(config=...)`` and ``PPOEngine(config=...)`` build the examples' flows
themselves: with an example's own config they end on the example's weights and
rewards, bit for bit, evaluation included. ChatLearn's form takes the modules in;
the YAML-only path refuses a job that gives it no prompts.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path
from typing import Any, get_args

import pytest
import torch
from same import assert_same

from rlhfjob import context
from rlhfjob.algorithms import GRPOEngine, PPOEngine, RLHFEngine
from rlhfjob.algorithms.engines import (
    ENGINES,
    EVAL_PROMPTS,
    TRAIN_PROMPTS,
    learn_from_spec,
)
from rlhfjob.algorithms.ppo import (
    PolicyInference,
    PolicyReference,
    PolicyTrainer,
    RewardInference,
    ValueInference,
    ValueTrainer,
)
from rlhfjob_operator.spec import Entrypoint, load_job

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _load(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"engines_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _short_config(name: str, **runtime: Any) -> dict[str, Any]:
    """The example's own config, cut to two small episodes, evaluated before and after each."""
    report = _load("_report")
    args = report.parse_args([], description=None, config=EXAMPLES / f"{name}.yaml")
    config: dict[str, Any] = report.load_config(args)
    short: dict[str, Any] = dict(
        num_episode=2,
        sample_per_episode=8 if name == "grpo_sort" else 32,  # GRPO: prompts, 8 answers each
        generation_batch_size=8,
        train_micro_batch_size=8,
        train_global_batch_size=8 if name == "grpo_sort" else 16,
        eval_episode_interval=1,
        enable_eval_before_training=True,
    )
    config["runtime"].update(short, **runtime)
    return config


def _outcome(engine: Any) -> tuple[dict[str, Any], list[tuple[Any, Any]]]:
    summaries = engine.learn(progress=False)
    states = {m.name: m.state_dict() for m in engine.modules}
    curve = [(row["reward/reward_mean"], row.get("eval/reward")) for row in summaries]
    return states, curve


@pytest.mark.parametrize(
    ("example", "engine_class"), [("grpo_sort", GRPOEngine), ("ppo_sort", PPOEngine)]
)
def test_engine_ends_on_the_examples_weights(example: str, engine_class: type) -> None:
    config = _short_config(example)
    by_hand = _load(example).build_engine(
        copy.deepcopy(config), num_prompts=TRAIN_PROMPTS, num_eval=EVAL_PROMPTS
    )
    hand_states, hand_curve = _outcome(by_hand)
    ready = engine_class(config=copy.deepcopy(config))
    assert ready.evaluator is not None and ready.task is not None
    states, curve = _outcome(ready)
    assert len(curve) == 2 and all(evaluated is not None for _, evaluated in curve)
    assert_same(hand_curve, curve, example)
    assert_same(hand_states, states, example)


def test_chatlearn_form_takes_the_modules_in() -> None:
    """RLHFEngine(policy, reference, reward, value, ppo_policy, ppo_value): the modules
    passed are the engine's, their names key the config, and each trainer syncs into
    its twin."""
    assert RLHFEngine is PPOEngine
    config = _short_config(
        "ppo_sort", num_episode=1, eval_episode_interval=0, enable_eval_before_training=False
    )
    renamed = {"policy": "actor", "ppo_policy": "actor_trainer"}
    config["models"] = {renamed.get(k, k): v for k, v in config["models"].items()}
    modules = (
        PolicyInference("actor"),
        PolicyReference("reference"),
        RewardInference("reward"),
        ValueInference("value"),
        PolicyTrainer("actor_trainer"),
        ValueTrainer("ppo_value"),
    )
    engine = RLHFEngine(*modules, config=config)
    assert {id(m) for m in engine.modules} == {id(m) for m in modules}
    assert engine.evaluator is None  # no evaluation asked for
    assert len(engine.learn(progress=False)) == 1
    actor, trainer = modules[0], modules[4]
    assert actor.model is not None and trainer.model is not None
    assert_same(actor.model.state_dict(), trainer.model.state_dict(), "synced")


def test_an_eval_dataset_given_is_the_evaluators() -> None:
    prompts = [{"prompt_ids": torch.tensor([1, 2, 3, 4, 5, 6, 10])}]
    engine = GRPOEngine(config=_short_config("grpo_sort"), eval_dataset=prompts)
    assert engine.evaluator is not None and engine.evaluator.dataset == prompts


def test_the_spec_names_every_engine() -> None:
    annotation = Entrypoint.model_fields["engine"].annotation
    (literal,) = [a for a in get_args(annotation) if a is not type(None)]
    assert set(get_args(literal)) == set(ENGINES)


def _job(models: dict[str, Any], **runtime: Any) -> Any:
    return load_job(
        {
            "apiVersion": "rlhf.dev/v1alpha1",
            "kind": "RLHFJob",
            "metadata": {"name": "no-prompts"},
            "spec": {
                "image": "rlhfjob:dev",
                "entrypoint": {"engine": "ppo"},
                "runtime": {"num_episode": 1, "sample_per_episode": 4, **runtime},
                "models": models,
            },
        }
    )


_NO_TASK = {"gpt": {"n_layer": 1, "n_head": 1, "n_embd": 8, "vocab_size": 12}}


@pytest.mark.parametrize(
    ("runtime", "message"),
    [
        ({}, "set runtime.data_path to a prompt file, or models.policy.args.task"),
        (
            {"data_path": "/nowhere/train.jsonl", "eval_episode_interval": 1},
            "no eval prompts",
        ),
    ],
    ids=["no-prompts", "no-eval-prompts"],
)
def test_yaml_only_engine_without_prompts_is_refused(
    runtime: dict[str, Any], message: str, monkeypatch: pytest.MonkeyPatch, bad_inputs: Any
) -> None:
    policy = {"args": {**_NO_TASK, "max_new_tokens": 4}}
    monkeypatch.setattr(context, "job", _job({"policy": policy}, **runtime))
    with pytest.raises(ValueError, match=message):
        learn_from_spec("ppo")
    bad_inputs.refused("engine", 1)
