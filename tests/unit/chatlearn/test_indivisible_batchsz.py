"""Ported from ChatLearn's tests/rlhf/test_indivisible_batchsz.py (HEAD and v1.0.3): a
per-model ``generation_batch_size`` that does not divide the episode (5 into 16) gives
the trainer the very batches the divisible one (4) gives; the runtime's batch is the
whole episode, which each model cuts into its pieces. ChatLearn builds its
StreamDataset by hand and pulls two batches per episode; here the trainer records what
``learn()`` hands it, five episodes over ChatLearn's 35 prompts (ones * i)."""

from __future__ import annotations

import torch

from rlhfjob import BaseModule, Engine, Environment, Trainer

ENV_MODELS = ("policy", "reference", "reward", "value")


class PolicyModel(BaseModule):
    def forward_step(self, data, iteration):
        data["policy_out"] = data["query"] * 2
        return data


class ReferenceModel(BaseModule):
    def forward_step(self, data, iteration):
        data["ref_out"] = data["policy_out"] + 1
        return data


class RewardModel(BaseModule):
    def forward_step(self, data, iteration):
        data["reward_out"] = data["ref_out"] + data["policy_out"]
        return data


class ValueModel(BaseModule):
    def forward_step(self, data, iteration):
        data["value_out"] = data["policy_out"] * 3
        return data


class PPOPolicy(BaseModule):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches = []

    def train_step(self, data, iteration):
        self.batches.extend(data)
        return len(data)


def get_batches(modify_generation_batch_size=False):
    policy, reference = PolicyModel("policy"), ReferenceModel("reference")
    reward, value = RewardModel("reward"), ValueModel("value")
    ppo_policy = PPOPolicy("ppo_policy")

    def env_flow(batch):
        policy_out = policy.forward_step(batch)
        ref_out = reference.forward_step(policy_out)
        value_out = value.forward_step(policy_out)
        return reward.forward_step(policy_out, ref_out, value_out)

    # ChatLearn's divisible run uses 4 (rlhf.yaml's runtime value) for every model.
    new_generation_batch_size = 5 if modify_generation_batch_size else 4
    models = {name: {"generation_batch_size": new_generation_batch_size} for name in ENV_MODELS}
    models["ppo_policy"] = {"trainable": True}
    config = {
        "runtime": {
            "num_episode": 5,
            "sample_per_episode": 16,
            "generation_batch_size": 16,
            "train_micro_batch_size": 5,
            "train_global_batch_size": 10,
            "data_shuffle": False,
        },
        "models": models,
    }
    data = torch.ones([8])
    engine = Engine(
        Environment(env_flow), Trainer(lambda b: ppo_policy.train_step(b)), config=config
    )
    engine.set_dataset([{"query": data * i} for i in range(35)]).learn(progress=False)
    return ppo_policy.batches


def test_indivisible_batch_size():
    """test_indivisible_batch_size: as many batches, the same keys, equal tensors."""
    divisible_batches = get_batches()
    indivisible_batches = get_batches(modify_generation_batch_size=True)
    assert len(divisible_batches) == len(indivisible_batches) == 5 * 4
    for divisible_data, indivisible_data in zip(
        divisible_batches, indivisible_batches, strict=True
    ):
        assert divisible_data.keys() == indivisible_data.keys()
        for key in divisible_data:
            assert torch.equal(divisible_data[key], indivisible_data[key]), key
