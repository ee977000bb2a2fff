"""Bad model arguments and worker environments, refused naming what to fix.

Model paths that are not saved Hugging Face models (missing, a file, an empty
directory, a config without weights, a broken config), a bad dtype, missing
weights, model_args naming no model; reward settings naming no reward model (a
causal LM's directory among them), no tokenizer or no function; and the worker's
environment contract with a variable missing or malformed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from rlhfjob.algorithms.common import build_lm
from rlhfjob.algorithms.configs import ModelConfig
from rlhfjob.comm.env import WorkerEnv

GPT = {"n_layer": 1, "n_head": 1, "n_embd": 8, "block_size": 8, "vocab_size": 10}


def _saved_config(path: Path) -> Path:
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=20).save_pretrained(path)
    return path


def _a_file(t: Path) -> dict[str, Any]:
    (t / "f").write_text("x")
    return {"model_path": str(t / "f")}


def _broken_config(t: Path) -> dict[str, Any]:
    (t / "config.json").write_text("{oops")
    return {"model_path": str(t)}


# (id, the model_args for tmp_path, what the message must contain for tmp_path)
MODEL_CASES: list[tuple[str, Any, Any]] = [
    ("missing", lambda t: {"model_path": str(t / "nope")}, lambda t: f"'{t / 'nope'}'"),
    ("a-file", _a_file, lambda t: "is not a local directory"),
    ("empty-dir", lambda t: {"model_path": str(t)}, lambda t: "has no config.json"),
    ("no-weights", lambda t: {"model_path": str(_saved_config(t / "c"))}, lambda t: str(t / "c")),
    ("broken-config", _broken_config, lambda t: "config.json"),
    (
        "bad-dtype",
        lambda t: {"model_path": str(_saved_config(t / "c")), "dtype": "int8"},
        lambda t: "dtype 'int8' is not one of",
    ),
    (
        "missing-weights",
        lambda t: {"gpt": GPT, "weights_path": str(t / "w.pt")},
        lambda t: f"weights_path '{t / 'w.pt'}' does not exist",
    ),
    ("no-model", lambda t: {}, lambda t: "models.policy.args must name a model"),
    ("gpt-without-vocab", lambda t: {"gpt": {"n_layer": 1}}, lambda t: "needs vocab_size"),
    (
        "warmup-without-task",
        lambda t: {"gpt": GPT, "warmup": {"steps": 1}},
        lambda t: "needs a 'task'",
    ),
]


@pytest.mark.parametrize(("case", "args", "named"), MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_bad_model_args_are_refused_naming_the_fix(
    tmp_path: Path, case: str, args: Any, named: Any, bad_inputs: Any
) -> None:
    del case
    with pytest.raises((ValueError, OSError)) as info:
        build_lm(ModelConfig.from_args("policy", args(tmp_path)))
    assert named(tmp_path) in str(info.value), str(info.value)
    bad_inputs.refused("model path")


CONTRACT = {
    "RLHFJOB_JOB_NAME": "j",
    "RLHFJOB_ROLE": "policy",
    "RLHFJOB_MODELS": "policy",
    "RLHFJOB_REPLICA": "0",
    "RANK": "1",
    "WORLD_SIZE": "2",
    "MASTER_ADDR": "127.0.0.1",
    "MASTER_PORT": "29500",
    "RLHFJOB_SPEC": "/etc/rlhfjob/job.yaml",
    "RLHFJOB_JOB_SECRET": "s" * 43,
}
# (change to the contract, the message) — None removes the variable.
ENV_CASES: list[tuple[dict[str, str | None], str]] = [
    ({"RLHFJOB_JOB_SECRET": None}, "RLHFJOB_JOB_SECRET is not set"),
    ({"RLHFJOB_JOB_SECRET": ""}, "RLHFJOB_JOB_SECRET is not set"),
    ({"RLHFJOB_JOB_SECRET": "short"}, "RLHFJOB_JOB_SECRET has 5 characters"),
    ({"RLHFJOB_JOB_NAME": None}, "RLHFJOB_JOB_NAME is not set"),
    ({"RLHFJOB_SPEC": None}, "RLHFJOB_SPEC is not set"),
    ({"MASTER_ADDR": None}, "MASTER_ADDR is not set"),
    ({"MASTER_PORT": "http"}, "MASTER_PORT='http' is not an integer"),
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not an integer"),
    ({"RLHFJOB_REPLICA": "-"}, "RLHFJOB_REPLICA='-' is not an integer"),
    ({"RLHFJOB_METRICS_PORT": "x"}, "RLHFJOB_METRICS_PORT='x' is not an integer"),
    ({"RLHFJOB_RESTART_GENERATION": "1.5"}, "RLHFJOB_RESTART_GENERATION='1.5' is not an integer"),
    ({"RANK": "2"}, "RANK=2 is outside 0..WORLD_SIZE-1"),
    ({"RANK": "0"}, "the driver and only it is rank 0"),
    ({"RLHFJOB_MODELS": ""}, "RLHFJOB_MODELS is empty for worker policy"),
]


@pytest.mark.parametrize(("change", "message"), ENV_CASES, ids=[m for _, m in ENV_CASES])
def test_a_bad_environment_contract_names_the_variable(
    change: dict[str, str | None], message: str, bad_inputs: Any
) -> None:
    env = {**CONTRACT, **change}
    with pytest.raises(ValueError, match=re.escape(message)):
        WorkerEnv.from_environ({k: v for k, v in env.items() if v is not None})
    bad_inputs.refused("env contract")


def test_the_contract_itself_is_valid_and_keeps_the_secret_out_of_its_repr() -> None:
    env = WorkerEnv.from_environ(CONTRACT)
    assert env.name == "policy-0" and env.secret == "s" * 43
    assert "s" * 43 not in repr(env)


def _reward_model_of_a_causal_lm(t: Path) -> dict[str, Any]:
    from textmodels import save_text_model

    return {"reward_model_path": str(save_text_model(t / "lm")), "tokenizer_path": str(t / "lm")}


def _reward_model_without_tokenizer(t: Path) -> dict[str, Any]:
    from textmodels import save_reward_model

    path = save_reward_model(t / "rm")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (path / name).unlink()
    return {"reward_model_path": str(path), "tokenizer_path": str(t)}


# (id, the reward's args for tmp_path, what the message must contain for tmp_path)
REWARD_CASES: list[tuple[str, Any, Any]] = [
    (
        "reward-model-missing",
        lambda t: {"reward_model_path": str(t / "nope"), "tokenizer_path": str(t)},
        lambda t: f"models.reward.args.reward_model_path '{t / 'nope'}' is not a local",
    ),
    (
        "reward-model-empty-dir",
        lambda t: {"reward_model_path": str(t), "tokenizer_path": str(t)},
        lambda t: f"reward_model_path '{t}' holds no sequence-classification model",
    ),
    (
        "reward-model-of-a-causal-lm",
        _reward_model_of_a_causal_lm,
        lambda t: "is no trained reward model: its checkpoint lacks score.weight",
    ),
    (
        "reward-model-without-tokenizer",
        _reward_model_without_tokenizer,
        lambda t: f"models.reward.args.reward_model_path '{t / 'rm'}' holds no tokenizer",
    ),
    (
        "tokenizer-path-missing",
        lambda t: {
            "reward_fn": "rlhfjob.rewards.arith:exact_answer",
            "tokenizer_path": str(t / "x"),
        },
        lambda t: f"models.reward.args.tokenizer_path '{t / 'x'}' is not a local directory",
    ),
    (
        "reward-fn-missing",
        lambda t: {"reward_fn": "rlhfjob.rewards.arith:no_such_fn"},
        lambda t: "models.reward.args.reward_fn: cannot import 'rlhfjob.rewards.arith:no_such_fn'",
    ),
]


@pytest.mark.parametrize(("case", "args", "named"), REWARD_CASES, ids=[c[0] for c in REWARD_CASES])
def test_bad_reward_args_are_refused_naming_the_setting(
    tmp_path: Path, case: str, args: Any, named: Any, bad_inputs: Any
) -> None:
    """What RewardInference.setup() does on the worker, from the same settings."""
    pytest.importorskip("transformers")
    del case
    from rlhfjob.algorithms.configs import RewardConfig
    from rlhfjob.rewards import build_scorer

    config = RewardConfig.from_args("reward", args(tmp_path))
    with pytest.raises(ValueError) as info:
        build_scorer(
            "reward",
            paths=config.reward_fn or (),
            weights=config.reward_weights,
            model_path=config.reward_model_path,
            tokenizer_path=config.tokenizer_path,
        )
    assert named(tmp_path) in str(info.value), str(info.value)
    bad_inputs.refused("model path")
