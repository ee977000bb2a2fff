"""A Hugging Face causal LM from a local path runs PPO through the adapter.

The model is a tiny randomly initialised one that the test builds from a
config and saves to tmp_path: no hub access.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")

from textmodels import tiny_lm  # noqa: E402

from rlhfjob.algorithms.ppo import (  # noqa: E402
    PolicyInference,
    PolicyReference,
    PolicyTrainer,
    RewardInference,
    ValueInference,
    ValueTrainer,
)
from rlhfjob.algorithms.tasks import SortTask  # noqa: E402
from rlhfjob.data import collate, split_samples  # noqa: E402
from rlhfjob.models import HFCausalLM, load_hf_causal_lm  # noqa: E402
from rlhfjob.rollout import GenerationSettings, engine_for  # noqa: E402
from rlhfjob_operator.spec import JobConfig  # noqa: E402

TASK = SortTask(num_digits=4)


def save_tiny(kind: str, path: Path) -> Path:
    tiny_lm(kind, vocab=TASK.vocab_size, positions=16).save_pretrained(path)
    return path


@pytest.fixture(params=["gpt2", "llama"])
def model_path(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    return save_tiny(request.param, tmp_path / request.param)


def test_missing_path_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ValueError, match=str(missing)):
        load_hf_causal_lm(missing)
    module = PolicyInference("policy")
    args = {"model_path": "gpt2", "max_new_tokens": 2}  # valid settings: the path is the problem
    module.bind(JobConfig.model_validate({"models": {"policy": {"args": args}}}))
    with pytest.raises(ValueError, match="'gpt2'"):
        module.setup()


def test_adapter_gives_logits_and_respects_left_padding(model_path: Path) -> None:
    model = load_hf_causal_lm(model_path)
    assert isinstance(model, HFCausalLM)
    ids = torch.randint(0, 10, (2, 5))
    assert model(ids).shape == (2, 5, TASK.vocab_size)
    assert model.hidden_states(ids).shape == (2, 5, 16)
    padded = torch.cat([torch.full((2, 2), TASK.pad_token_id), ids], dim=1)
    mask = torch.cat([torch.zeros(2, 2, dtype=torch.long), torch.ones(2, 5, dtype=torch.long)], 1)
    assert torch.allclose(model(padded, mask)[:, 2:], model(ids), atol=1e-5)
    model.train()
    assert not model.model.training  # dropout stays off: PPO's ratio is 1 at the start
    rollout = engine_for(model).generate(ids, None, GenerationSettings(max_new_tokens=3))
    assert rollout.response_ids.shape == (2, 3)


def _modules(model_path: Path) -> tuple[list[Any], JobConfig]:
    model_args = {"model_path": str(model_path), "task": {"num_digits": TASK.num_digits}}
    config = JobConfig.model_validate(
        {
            "models": {
                "policy": {"args": model_args},
                "reference": {"args": model_args},
                "value": {"args": model_args},
                "reward": {"args": {"task": {"num_digits": TASK.num_digits}, "kl_coef": 0.1}},
                "ppo_policy": {"trainable": True, "args": {**model_args, "lr": 1e-2}},
                "ppo_value": {"trainable": True, "args": {**model_args, "lr": 1e-2}},
            }
        }
    )
    modules = [
        PolicyInference("policy"),
        PolicyReference("reference"),
        ValueInference("value"),
        RewardInference("reward"),
        PolicyTrainer("ppo_policy"),
        ValueTrainer("ppo_value"),
    ]
    for module in modules:
        module.bind(config)
        module.setup()
    return modules, config


def test_ppo_forward_and_train_step_on_an_hf_model(model_path: Path) -> None:
    (policy, reference, value, reward, ppo_policy, ppo_value), _ = _modules(model_path)
    torch.manual_seed(0)
    batch = collate(policy.build_dataset(TASK.make_prompts(8, seed=0)))
    out = policy.forward_step(batch, 0)
    out = reward.forward_step({**out, **reference.forward_step(out), **value.forward_step(out)})
    assert out["response_ids"].shape == (8, TASK.num_digits)
    for key in ("old_logprobs", "ref_logprobs", "values", "advantages", "returns"):
        assert out[key].shape == (8, TASK.num_digits), key
    # Policy and reference are the same weights, so the KL (and its penalty) is 0.
    assert torch.allclose(out["old_logprobs"], out["ref_logprobs"])
    samples = split_samples(out)
    micro = [collate(samples[:4]), collate(samples[4:])]
    before = {k: v.clone() for k, v in ppo_policy.named_parameters_to_sync().items()}
    ppo_policy.train_step(micro, 0)
    ppo_value.train_step(micro, 0)
    metrics = ppo_policy.get_and_clear_metrics()
    assert metrics["clipfrac"] == 0.0  # first step on fresh samples: ratio 1 everywhere
    assert "value_loss" in ppo_value.get_and_clear_metrics()
    after = ppo_policy.named_parameters_to_sync()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    # The trainer's parameters line up by name with its inference twin's.
    assert set(after) == set(policy.named_parameters_to_sync())
    assert set(ppo_value.named_parameters_to_sync()) == set(value.named_parameters_to_sync())
