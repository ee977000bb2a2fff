"""Ported from ChatLearn's tests/rlhf/test_relay_buffer.py (v1.0.3; HEAD spells "relay"
as "replay", and so does rlhfjob): the sample manager sees the last
``max_replay_episode`` episodes' buffers, each with ChatLearn's 0-based
``episode_id``; -1 keeps every episode. The model outputs on CUDA become CPU tensors."""

from __future__ import annotations

import pytest
import torch

from rlhfjob import BaseModule, Engine, Environment, Trainer


class PolicyModel(BaseModule):
    def forward_step(self, data, iteration):
        data["policy_out"] = torch.ones([data["query"].size(0), 4])
        return data


class PPOPolicy(BaseModule):
    def train_step(self, data, iteration):
        return len(data)


def _engine(max_replay_episode: int, num_episode: int = 3) -> Engine:
    policy, ppo_policy = PolicyModel("policy"), PPOPolicy("ppo_policy")
    return Engine(
        Environment(lambda b: policy.forward_step(b)),
        Trainer(lambda b: ppo_policy.train_step(b)),
        config={
            "runtime": {
                "num_episode": num_episode,
                "sample_per_episode": 16,
                "generation_batch_size": 4,
                "train_micro_batch_size": 4,
                "max_replay_episode": max_replay_episode,
                "data_shuffle": False,
            },
            "models": {"ppo_policy": {"trainable": True}},
        },
    ).set_dataset([{"query": torch.ones([10]) * i} for i in range(35)])


def test_relay_buffer():
    """test_relay_buffer: the last buffer is this episode's, its rows in prompt order
    (query i + episode_id * 16 here, 1024 in ChatLearn's case), with max 5 kept."""
    seen = []

    def manager(episode_replay_buffers):
        buffer = episode_replay_buffers[-1].buffer
        episode_id = episode_replay_buffers[-1].episode_id
        assert len(buffer) == 16
        for i in range(len(buffer)):
            assert int(buffer[i]["query"][0].item()) == (i + episode_id * 16) % 35
        seen.append([b.episode_id for b in episode_replay_buffers])
        return buffer

    _engine(5).set_replay_sample_manager(manager).learn(progress=False)
    assert seen == [[0], [0, 1], [0, 1, 2]]


@pytest.mark.parametrize(
    ("keep", "expected"), [(-1, [[0], [0, 1], [0, 1, 2], [0, 1, 2, 3]]), (0, [[0], [1], [2], [3]])]
)
def test_max_replay_episode_minus_one_keeps_every_episode(keep, expected):
    """ChatLearn's -1: replay all episodes. 0 (the default) hands the manager this
    episode only; ChatLearn skips the manager then (see README, Porting from ChatLearn)."""
    seen = []

    def manager(buffers):
        seen.append([b.episode_id for b in buffers])
        return buffers[-1].buffer

    _engine(keep, num_episode=4).set_replay_sample_manager(manager).learn(progress=False)
    assert seen == expected
