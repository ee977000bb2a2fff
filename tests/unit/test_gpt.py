"""The small GPT: shapes, sampling, log-probs, padding, and the task around it."""

from __future__ import annotations

import pytest
import torch

from rlhfjob.algorithms.common import build_lm
from rlhfjob.algorithms.configs import ModelConfig
from rlhfjob.algorithms.tasks import SortTask, get_task
from rlhfjob.models import GPT, GPTConfig, ValueModel, response_log_probs


def tiny(**kw: int) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=12, block_size=16, n_layer=2, n_head=2, n_embd=16, **kw))


def test_shapes() -> None:
    model = tiny()
    idx = torch.randint(0, 12, (3, 7))
    assert model(idx).shape == (3, 7, 12)
    assert model.hidden_states(idx).shape == (3, 7, 16)
    assert model.log_probs(idx).shape == (3, 6)
    assert ValueModel(model)(idx).shape == (3, 7)


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match="multiple of n_head"):
        GPTConfig(vocab_size=12, n_embd=10, n_head=4)
    with pytest.raises(ValueError, match="unknown GPTConfig"):
        GPTConfig.from_dict({"vocab_size": 12, "n_layers": 2})
    with pytest.raises(ValueError, match="block_size"):
        tiny()(torch.zeros(1, 17, dtype=torch.long))


def test_causal() -> None:
    model = tiny()
    idx = torch.randint(0, 12, (1, 8))
    changed = idx.clone()
    changed[0, 5] = (changed[0, 5] + 1) % 12
    a, b = model(idx), model(changed)
    assert torch.allclose(a[:, :5], b[:, :5], atol=1e-6)
    assert not torch.allclose(a[:, 5:], b[:, 5:])


def test_log_probs_match_a_manual_softmax() -> None:
    model = tiny()
    idx = torch.randint(0, 12, (2, 6))
    logits = model(idx)
    manual = torch.log_softmax(logits, -1)[:, :-1].gather(-1, idx[:, 1:, None]).squeeze(-1)
    assert torch.allclose(model.log_probs(idx), manual, atol=1e-6)
    lp, _ = response_log_probs(model, idx, None, num_response=2)
    assert torch.allclose(lp, manual[:, -2:], atol=1e-6)


def test_left_padding_changes_nothing_for_real_tokens() -> None:
    model = tiny()
    idx = torch.randint(0, 10, (1, 5))
    padded = torch.cat([torch.full((1, 3), 11), idx], dim=1)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]])
    assert torch.allclose(model(padded, mask)[:, 3:], model(idx), atol=1e-5)


def test_sort_task_reward_and_vocab() -> None:
    task = SortTask(num_digits=4)
    prompt = task.encode([3, 1, 2, 1])[None]
    assert task.decode(prompt[0]) == "3121>"
    right = torch.tensor([[1, 1, 2, 3]])
    half = torch.tensor([[1, 2, 1, 3]])
    assert task.reward({"prompt_ids": prompt, "response_ids": right}).tolist() == [1.0]
    assert task.reward({"prompt_ids": prompt, "response_ids": half}).tolist() == [0.5]
    with pytest.raises(ValueError, match="4 digits"):
        task.encode([1, 2])
    with pytest.raises(ValueError, match="unknown task"):
        get_task({"name": "add"})
    a = task.make_prompts(5, seed=3)
    assert [p["prompt_ids"].tolist() for p in a] == [
        p["prompt_ids"].tolist() for p in task.make_prompts(5, seed=3)
    ]


def test_build_lm_is_identical_across_modules_and_leaves_the_global_rng_alone() -> None:
    args = {
        "task": {"num_digits": 4},
        "gpt": {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 12},
        "warmup": {"steps": 3, "seed": 5},
    }
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a, b = build_lm(ModelConfig.from_mapping(args)), build_lm(ModelConfig.from_mapping(dict(args)))
    assert torch.equal(torch.random.get_rng_state(), before)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    fresh = build_lm(ModelConfig.from_mapping({k: v for k, v in args.items() if k != "warmup"}))
    assert not torch.equal(fresh.lm_head.weight, a.lm_head.weight)  # the warm-up trained it


def test_build_lm_errors() -> None:
    with pytest.raises(ValueError, match="must name a model"):
        build_lm(ModelConfig.from_mapping({}))
    with pytest.raises(ValueError, match="/no/such/weights.pt"):
        build_lm(ModelConfig(gpt={"vocab_size": 12}, weights_path="/no/such/weights.pt"))
