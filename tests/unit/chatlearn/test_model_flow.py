"""Ported from ChatLearn's tests/rlhf/test_model_flow.py (v1.0.3): an env flow that calls
one model's several methods and returns two outputs (``return value_out, reward_out``).
ChatLearn's case checks the traced nodes' order, names and methods; the behaviour
behind the second return value, merged training samples, is checked too."""

from __future__ import annotations

import pytest
import torch

from rlhfjob import BaseModule, Engine, Environment, FlowError, Trainer
from rlhfjob.flow import trace


class PolicyModel(BaseModule):
    def forward_step(self, data, iteration):
        return data

    def forward_step2(self, data, iteration):
        return data

    def forward_step3(self, data, iteration):
        return data


class ReferenceModel(BaseModule):
    def forward_step(self, data, iteration):
        return data


class RewardModel(BaseModule):
    def forward_step(self, data, iteration):
        return data


class ValueModel(BaseModule):
    def forward_step(self, data, iteration):
        return data

    def forward_step2(self, data, iteration):
        return data


def test_model_flow():
    """test_model_flow: nodes in call order, by model and method; two returned outputs."""
    policy, reference = PolicyModel("policy"), ReferenceModel("reference")
    reward, value = RewardModel("reward"), ValueModel("value")

    def env_compute_flow(batch):
        policy_out = policy.forward_step(batch)
        ref_out = reference.forward_step(policy_out)
        policy_out2 = policy.forward_step2(ref_out)
        value_out = value.forward_step2(policy_out2)
        policy_out3 = policy.forward_step3(value_out)
        reward_out = reward.forward_step(policy_out3, policy_out, ref_out, value_out)
        return value_out, reward_out

    graph = trace(env_compute_flow)
    assert [(n.module.name, n.method) for n in graph.nodes] == [
        ("policy", "forward_step"),
        ("reference", "forward_step"),
        ("policy", "forward_step2"),
        ("value", "forward_step2"),
        ("policy", "forward_step3"),
        ("reward", "forward_step"),
    ]
    assert graph.outputs == (3, 5)

    def env_compute_flow2(batch):
        policy_out = policy.forward_step(batch)
        ref_out = reference.forward_step(policy_out)
        value_out = value.forward_step(policy_out)
        reward_out = reward.forward_step(policy_out, ref_out, value_out)
        return value_out, reward_out

    graph = trace(env_compute_flow2)
    assert [n.module.name for n in graph.nodes] == ["policy", "reference", "value", "reward"]
    assert graph.outputs == (2, 3)


class Values(BaseModule):
    def forward_step(self, data, iteration):
        return {"query": data["query"], "values": data["query"] * 3}


class Rewards(BaseModule):
    def forward_step(self, data, iteration):
        return {"rewards": data["query"] + 1, "values": data["query"] * 0}


class Collect(BaseModule):
    def setup(self):
        self.seen = []

    def train_step(self, data, iteration):
        self.seen.extend(data)


def test_the_trainer_gets_each_sample_merged_from_both_outputs():
    """The two outputs' rows merge per sample in the order returned: the later one's key
    wins (``values`` from the reward model)."""
    values, rewards, collect = Values("values"), Rewards("rewards"), Collect("collect")

    def env(batch):
        return values.forward_step(batch), rewards.forward_step(batch)

    engine = Engine(
        Environment(env),
        Trainer(lambda batch: collect.train_step(batch)),
        config={
            "runtime": {
                "num_episode": 1,
                "sample_per_episode": 4,
                "generation_batch_size": 2,
                "train_micro_batch_size": 4,
                "data_shuffle": False,
            },
            "models": {"collect": {"trainable": True}},
        },
    )
    engine.set_dataset([{"query": torch.tensor(float(i))} for i in range(4)]).learn(progress=False)
    (batch,) = collect.seen
    assert batch["query"].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert batch["rewards"].tolist() == [1.0, 2.0, 3.0, 4.0]
    assert batch["values"].tolist() == [0.0, 0.0, 0.0, 0.0]


def test_outputs_that_disagree_on_the_batch_are_named():
    class Half(BaseModule):
        def forward_step(self, data, iteration):
            return {"half": data["query"][:1]}

    values, half, collect = Values("values"), Half("half"), Collect("collect")
    engine = Engine(
        Environment(lambda b: (values.forward_step(b), half.forward_step(b))),
        Trainer(lambda batch: collect.train_step(batch)),
        config={
            "runtime": {"num_episode": 1, "sample_per_episode": 2, "generation_batch_size": 2},
            "models": {"collect": {"trainable": True}},
        },
    )
    engine.set_dataset([{"query": torch.tensor(1.0)}] * 2)
    with pytest.raises(ValueError, match=r"values.forward_step 2, half.forward_step 1"):
        engine.learn(progress=False)


def test_returning_one_output_twice_is_refused():
    values = Values("values")

    def flow(batch):
        out = values.forward_step(batch)
        return out, out

    with pytest.raises(FlowError, match="returns the output of values.forward_step twice"):
        trace(flow)
