"""Ported from ChatLearn's tests/rlhf/test_relay_buffer.py (v1.0.3; HEAD spells "relay"
as "replay", and rlhfjob takes both): the sample manager sees the last
``max_replay_episode`` episodes' buffers, each with ChatLearn's 0-based
``episode_id``; -1 keeps every episode. The model outputs on CUDA become CPU tensors."""

from __future__ import annotations

import pytest
import torch

from rlhfjob import BaseModule, Engine, Environment, SpecError, Trainer


class PolicyModel(BaseModule):
    def forward_step(self, data, iteration):
        data["policy_out"] = torch.ones([data["query"].size(0), 4])
        return data


class PPOPolicy(BaseModule):
    def train_step(self, data, iteration):
        return len(data)


def _engine(max_replay_episode: int | None, num_episode: int = 3, **runtime) -> Engine:
    policy, ppo_policy = PolicyModel("policy"), PPOPolicy("ppo_policy")
    if max_replay_episode is not None:
        runtime["max_replay_episode"] = max_replay_episode
    return Engine(
        Environment(lambda b: policy.forward_step(b)),
        Trainer(lambda b: ppo_policy.train_step(b)),
        config={
            "runtime": {
                "num_episode": num_episode,
                "sample_per_episode": 16,
                "generation_batch_size": 4,
                "train_micro_batch_size": 4,
                "data_shuffle": False,
                **runtime,
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
    ("keep", "expected"), [(-1, [[0], [0, 1], [0, 1, 2], [0, 1, 2, 3]]), (1, [[0], [1], [2], [3]])]
)
def test_max_replay_episode_minus_one_keeps_every_episode(keep, expected):
    """ChatLearn's -1: replay all episodes; 1: this episode only."""
    seen = []

    def manager(buffers):
        seen.append([b.episode_id for b in buffers])
        return buffers[-1].buffer

    _engine(keep, num_episode=4).set_replay_sample_manager(manager).learn(progress=False)
    assert seen == expected


@pytest.mark.parametrize("keep", [None, 0])
def test_max_replay_episode_zero_disables_replay(keep, bad_inputs):
    """chatlearn/data/data.py ``StreamDataset.set_dataset``: replay runs only when
    ``max_replay_episode > 0`` (or -1); 0, the default, trains each episode on its own
    samples. ChatLearn then skips a manager that is set without a word; rlhfjob refuses
    it before any episode runs, naming the key (README, Porting from ChatLearn)."""
    engine = _engine(keep)
    engine.learn(progress=False)
    assert [summary["train_steps"] for summary in engine.summaries] == [4] * 3
    called = []
    refused = _engine(keep).set_replay_sample_manager(lambda buffers: called.append(buffers))
    with pytest.raises(ValueError, match=r"runtime\.max_replay_episode is 0, which disables"):
        refused.learn(progress=False)
    assert called == []
    bad_inputs.refused("engine", 1)


@pytest.mark.parametrize("setter", ["set_relay_sample_manager", "set_relay_sample_fn"])
def test_relay_buffer_v1_spellings(setter):
    """test_relay_buffer (v1.0.3 as written): ``max_relay_episode: 5``, a
    ``RelaySampleManager`` subclass given to ``set_relay_sample_manager`` (or a function
    to ``set_relay_sample_fn``, as v1.0.3's docs/en/advanced.rst has it), and the
    buffer's ``_episode_id``."""

    class RelaySampleManagerTester:
        def __init__(self):
            self.seen = []

        def __call__(self, episode_relay_buffers):
            buffer = episode_relay_buffers[-1].buffer
            episode_id = episode_relay_buffers[-1]._episode_id
            for i in range(len(buffer)):
                assert int(buffer[i]["query"][0].item()) == (i + episode_id * 16) % 35
            self.seen.append([b._episode_id for b in episode_relay_buffers])
            return buffer

    manager = RelaySampleManagerTester()
    engine = _engine(None, max_relay_episode=5)
    getattr(engine, setter)(manager)
    engine.learn(progress=False)
    assert manager.seen == [[0], [0, 1], [0, 1, 2]]


@pytest.mark.parametrize("key", ["replay_episode_offset", "relay_episode_offset"])
def test_replay_episode_offset(key):
    """chatlearn/data/data.py ``StreamDataset.set_dataset`` (HEAD; v1.0.3 spells it
    ``relay_episode_offset``): episodes before the offset train on their own samples,
    the manager is not called and their buffers are never kept."""
    seen = []

    def replay_sample_fn(episode_replay_buffers):
        seen.append([b.episode_id for b in episode_replay_buffers])
        return episode_replay_buffers[-1].buffer

    engine = _engine(2, num_episode=5, **{key: 2})
    engine.set_replay_sample_fn(replay_sample_fn)
    engine.learn(progress=False)
    assert seen == [[2], [2, 3], [3, 4]]
    trained = [summary["train_steps"] for summary in engine.summaries]
    assert trained == [4] * 5, "every episode trains on its 16 samples"


def test_both_spellings_of_one_key_are_refused():
    """Not in ChatLearn: ``max_relay_episode`` and ``max_replay_episode`` together are
    one setting given twice; the error names both."""
    with pytest.raises(SpecError, match="max_relay_episode and runtime.max_replay_episode"):
        _engine(1, max_relay_episode=2)
