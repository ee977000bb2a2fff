"""Ported from ChatLearn's tests/eval/test_evaluator.py (v1.0.3), as a ChatLearn user
writes them: ``EvalEngine(eval_flow)``, ``engine.set_dataset``, ``engine.eval()`` keyed
by the returned model's name, ``engine.stop()``. Three replicas become one: replicas
are a placement detail of the distributed executor, tested under `rlhfjob run`."""

from __future__ import annotations

import pytest
from torch.utils.data import Dataset

from rlhfjob import BaseModule, EvalEngine

CONFIG = {"runtime": {"generation_batch_size": 8, "sample_per_episode": 8}}


class CustomDataset(Dataset):
    def __init__(self, data):
        self.data = data
        self.collate_fn = None

    def __len__(self):
        return len(self.data)

    def __getitem__(self, idx):
        if idx >= len(self.data):
            raise IndexError(idx)
        return {"query": self.data[idx]}


class PolicyModel(BaseModule):
    def forward_step(self, data, iteration):
        return data

    def build_dataset(self, prompts, is_eval=False):
        return CustomDataset(prompts)


def test_evaluator():
    """test_evaluator: every query comes back, under the model's name."""
    policy = PolicyModel("policy")

    def eval_flow(b):
        return policy.forward_step(b)

    engine = EvalEngine(eval_flow, config=CONFIG)
    train_prompts = ["query_" + str(i) for i in range(10, 91)]
    engine.set_dataset(train_prompts)
    results = engine.eval()["policy"]
    out = []
    for value in results:
        out += value["query"]
    assert sorted(out) == sorted(train_prompts)
    engine.stop()


def test_evaluator_2():
    """test_evaluator_2: a two-model eval flow; results under the last model's name."""

    class Policy(BaseModule):
        def forward_step(self, data, iteration):
            return {"policy": ["policy_" + item for item in data["query"]]}

        def build_dataset(self, prompts, is_eval=False):
            return CustomDataset(prompts)

    class RewardModel(BaseModule):
        def eval_step(self, data):
            return {"reward": ["reward_" + item for item in data["policy"]]}

    policy, reward = Policy("policy"), RewardModel("reward")

    def eval_flow(b):
        return reward.eval_step(policy.forward_step(b))

    engine = EvalEngine(eval_flow, config=CONFIG)
    train_prompts = ["query_" + str(i) for i in range(10, 91)]
    engine.set_dataset(train_prompts)
    out = []
    for value in engine.eval()["reward"]:
        out += value["reward"]
    assert sorted(out) == sorted(f"reward_policy_{p}" for p in train_prompts)


def test_iteration_is_passed_in_eval_flows_and_counts_batches():
    """ChatLearn passes ``iteration`` to every method that declares it, eval flows
    included (a method written ``forward_step(self, data, iteration)`` must not fail)."""
    seen = []

    class Counting(PolicyModel):
        def forward_step(self, data, iteration):
            seen.append(iteration)
            return data

    counting = Counting("policy")
    engine = EvalEngine(lambda b: counting.forward_step(b), config=CONFIG)
    engine.set_dataset([f"q{i}" for i in range(20)]).eval()
    assert seen == [0, 1, 2]  # 20 prompts in batches of 8


def test_eval_info_is_what_eval_is_given():
    """ChatLearn's ``eval(cur_iter, train_iteration)`` puts them in ``eval_info`` as
    ``episode_iteration`` and ``train_iteration``, and only those given."""
    policy = PolicyModel("policy")
    infos = []
    engine = EvalEngine(lambda b: policy.forward_step(b), config=CONFIG)
    engine.evaluator.set_post_process_func(lambda results, info: infos.append(info))
    engine.set_dataset(["a", "b"])
    engine.eval()
    engine.eval(cur_iter=3, train_iteration=12)
    assert infos == [{}, {"episode_iteration": 3, "train_iteration": 12}]


def test_eval_without_an_evaluator_names_the_fix():
    from rlhfjob import Engine, Environment

    policy = PolicyModel("policy")
    engine = Engine(Environment(lambda b: policy.forward_step(b)), config=CONFIG)
    with pytest.raises(ValueError, match="no evaluator; pass Evaluator"):
        engine.eval()
