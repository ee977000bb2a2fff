"""Ported from ChatLearn's tests/rlhf/test_ckpt.py (HEAD and v1.0.3): a run that saves
every episode, resumed from the checkpoint after its first episode, feeds the policy
the same query at each ``iteration`` as the uninterrupted run, and its trainer ends at
the same iteration. ChatLearn picks that checkpoint with
``load_data_checkpoint_iteration: 2``; rlhfjob resumes from the latest one, so the
interrupted run stops after one episode (see README, Porting from ChatLearn). The
policy keeps its queries in memory instead of pickling them into the checkpoint
directory. The ``_replica`` cases differ by ``num_gpu: 2`` (two policy replicas, one
file each): a placement detail, resumed under `rlhfjob run` in tests/runtime."""

from __future__ import annotations

import pytest
import torch

from rlhfjob import BaseModule, Engine, Environment, Trainer


class PolicyModel(BaseModule):
    def __init__(self, name, saved):
        super().__init__(name)
        self.saved = saved

    def forward_step(self, data, iteration):
        self.saved[iteration] = data["query"].clone()
        data["policy_out"] = data["query"]
        return data

    def build_dataset(self, prompts, is_eval=False):
        return [{"query": prompt} for prompt in prompts]


class ReferenceModel(BaseModule):
    def forward_step(self, data, iteration):
        data["ref_out"] = data["policy_out"]
        return data


class RewardModel(BaseModule):
    def forward_step(self, data, iteration):
        data["reward_out"] = data["ref_out"]
        return data


class ValueModel(BaseModule):
    def forward_step(self, data, iteration):
        data["value_out"] = data["policy_out"] * 3
        return data


class PPOPolicy(BaseModule):
    def __init__(self, name):
        super().__init__(name)
        self.iteration = 0

    def train_step(self, data, iteration):
        self.iteration = iteration + 1  # ChatLearn's trainer.iteration: steps done
        return len(data)


class PPOValue(BaseModule):
    def train_step(self, data, iteration):
        return len(data)


def _run(path, *, num_episode, datasets, data_ratio=None):
    """One learn(); the policy's query per iteration and the trainer's final iteration."""
    saved: dict[int, torch.Tensor] = {}
    policy, reference = PolicyModel("policy", saved), ReferenceModel("reference")
    reward, value = RewardModel("reward"), ValueModel("value")
    ppo_policy, ppo_value = PPOPolicy("ppo_policy"), PPOValue("ppo_value")

    def env_flow(batch):
        policy_out = policy.forward_step(batch)
        ref_out = reference.forward_step(policy_out)
        value_out = value.forward_step(policy_out)
        return reward.forward_step(policy_out, ref_out, value_out)

    def trainer_flow(batch):
        ppo_policy.train_step(batch)
        ppo_value.train_step(batch)

    runtime = {
        "data_checkpoint_path": str(path),
        "save_episode_interval": 1,
        "num_episode": num_episode,
        "train_micro_batch_size": 4,
        "train_global_batch_size": 8,
        "sample_per_episode": 16,
        "generation_batch_size": 4,
        "data_shuffle": False,
    }
    if data_ratio is not None:
        runtime["data_ratio"] = data_ratio
    config = {
        "runtime": runtime,
        "models": {
            "policy": {"num_replica": 1, "generation_batch_size": 4},
            "ppo_policy": {"trainable": True},
            "ppo_value": {"trainable": True},
        },
    }
    engine = Engine(Environment(env_flow), Trainer(trainer_flow), config=config)
    engine.set_multiple_datasets(datasets).learn(progress=False)
    return saved, ppo_policy.iteration, engine


def _check_resume(tmp_path, *, num_episode, datasets, data_ratio=None):
    data, iteration, _ = _run(
        tmp_path / "a", num_episode=num_episode, datasets=datasets, data_ratio=data_ratio
    )
    assert iteration == 2 * num_episode, "engine.trainer.iteration"
    _run(tmp_path / "b", num_episode=1, datasets=datasets, data_ratio=data_ratio)
    resumed, iteration, engine = _run(
        tmp_path / "b", num_episode=num_episode, datasets=datasets, data_ratio=data_ratio
    )
    assert iteration == 2 * num_episode
    assert engine.summaries[0]["episode"] == 1, "the first episode comes from the checkpoint"
    assert sorted(resumed) == list(range(4, 4 * num_episode)), "engine._start_episode == 1"
    for i in resumed:
        assert (data[i] == resumed[i]).all(), f"iteration {i}"


def test_rlhf_ckpt(tmp_path):
    """test_rlhf_ckpt: 4 episodes of 2 train steps: the trainer ends at iteration 8."""
    datasets = [[torch.Tensor([i]) for i in range(100)]]
    _, iteration, _ = _run(tmp_path, num_episode=4, datasets=datasets)
    assert iteration == 8


def test_rlhf_ckpt_resume(tmp_path):
    """test_rlhf_ckpt_resume: iterations 4..15 see the uninterrupted run's queries."""
    _check_resume(tmp_path, num_episode=4, datasets=[[torch.Tensor([i]) for i in range(100)]])


@pytest.mark.parametrize("resume", [False, True], ids=["data_ratio", "data_ratio_resume"])
def test_rlhf_ckpt_data_ratio(tmp_path, resume):
    """test_rlhf_ckpt_data_ratio(_resume): two datasets (0..7 and 8..23) with
    ``data_ratio: [1, 1]``, 5 episodes: the trainer ends at 10, and a resumed run sees
    the same queries at iterations 4..19."""
    datasets = [[torch.Tensor([i]) for i in range(8)], [torch.Tensor([i]) for i in range(8, 24)]]
    if resume:
        _check_resume(tmp_path, num_episode=5, datasets=datasets, data_ratio=[1, 1])
    else:
        _, iteration, _ = _run(tmp_path, num_episode=5, datasets=datasets, data_ratio=[1, 1])
        assert iteration == 10
