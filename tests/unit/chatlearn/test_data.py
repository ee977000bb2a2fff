"""Ported from ChatLearn's tests/rlhf/test_data.py (HEAD; v1.0.3 spells replay "relay"),
as a ChatLearn user writes it: the five models of its RLHF flow, a replay sample
function that checks each episode's buffer, and the trainer's record of what it got.
Tensor, pipeline, expert and ZeRO parallel sizes only change how ChatLearn places the
models, so its six test_data_* cases differ here by their batch shapes alone; replicas
are a placement detail of the distributed executor (tests/runtime). ``.cuda()`` goes.
The runtime section is ChatLearn's tests/configs/rlhf.yaml where a case sets nothing."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

from rlhfjob import BaseModule, Engine, Environment, Trainer

RLHF_YAML = {  # tests/configs/rlhf.yaml's runtime section
    "generation_batch_size": 4,
    "train_micro_batch_size": 5,
    "train_global_batch_size": 10,
    "num_episode": 2,
    "sample_per_episode": 16,
    "num_training_epoch": 1,
    "data_shuffle": False,
}


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
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.consumed = 0

    def forward_step(self, data, iteration):
        query = data["query"]
        bs = query.size(0)
        self.consumed += bs
        data["policy_out"] = torch.ones([bs, 8])
        return data

    def build_dataset(self, prompts, is_eval=False):
        return CustomDataset(prompts)


class ReferenceModel(BaseModule):
    def forward_step(self, data, iteration):
        data["ref_out"] = data["policy_out"] * 2
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
        self.data = []

    def train_step(self, data, iteration):
        self.data.append(data)
        return len(data)

    def get_data(self):
        return self.data


class PPOValue(BaseModule):
    def train_step(self, data, iteration):
        return len(data)


def rlhf_engine(**runtime):
    """ChatLearn's RLHFEngine flows over the five models, written out."""
    policy, reference = PolicyModel("policy"), ReferenceModel("reference")
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

    config = {
        "runtime": {**RLHF_YAML, **runtime},
        "models": {"ppo_policy": {"trainable": True}, "ppo_value": {"trainable": True}},
    }
    engine = Engine(Environment(env_flow), Trainer(trainer_flow), config=config)
    return engine, policy, ppo_policy


@pytest.mark.parametrize(
    ("prompts", "sample_per_episode", "global_batch"),
    [
        pytest.param(512, 256, 16, id="test_data_dp"),
        pytest.param(2048, 1024, 32, id="test_data_dp_ep-tp_2_ep-tp_ep_pp-tp_ep"),
        pytest.param(512, 256, 32, id="test_data_dp_zero"),
    ],
)
def test_data_dp(prompts, sample_per_episode, global_batch):
    """test_data_dp and its parallel variants: the last replay buffer is the episode's,
    in prompt order (query i + episode_id * sample_per_episode); the trainer sees every
    prompt exactly once over the two episodes, sample_per_episode / global_batch steps
    per episode, each of global_batch / micro micro-batches; every model consumed all."""
    engine, policy, ppo_policy = rlhf_engine(
        train_micro_batch_size=4,
        train_global_batch_size=global_batch,
        generation_batch_size=8,
        max_replay_episode=1,
        sample_per_episode=sample_per_episode,
    )

    def replay_sample_fn(episode_replay_buffers):
        buffer = episode_replay_buffers[-1].buffer
        episode_id = episode_replay_buffers[-1]._episode_id
        assert len(buffer) == sample_per_episode, f"{len(buffer)}"
        for i in range(len(buffer)):
            assert int(buffer[i]["query"][0].item()) == i + episode_id * sample_per_episode
        return buffer

    engine.set_replay_sample_fn(replay_sample_fn)
    data = [torch.ones([16]) * i for i in range(prompts)]
    engine.set_dataset(data)
    engine.learn(progress=False)

    all_data = []
    for item in ppo_policy.get_data():
        assert len(item) == global_batch // 4, "num_micro_batch per train_step"
        for batch in item:
            all_data.extend([i for i in batch["query"][:, 0].numpy()])
    assert len(all_data) == prompts
    distinct_data = set(all_data)
    assert len(distinct_data) == prompts
    assert min(distinct_data) == 0.0
    assert max(distinct_data) == prompts - 1
    assert [s["train_steps"] for s in engine.summaries] == [sample_per_episode // global_batch] * 2
    assert policy.consumed == prompts


def test_fixed_data():
    """test_fixed_data: 35 prompts, 16 per episode, ``max_replay_episode: 1``: the
    function gets one episode's 16 samples; 16 samples in micro-batches of 5 are 4
    micro-batches, in 2 global batches of 10 (the last one 6)."""
    engine, _, ppo_policy = rlhf_engine(max_replay_episode=1)
    sample_per_episode = 16

    def replay_sample_fn(episode_replay_buffers):
        buffers = []
        for replay_buffer in episode_replay_buffers:
            buffers += replay_buffer.buffer
        assert len(buffers) == sample_per_episode
        return buffers

    engine.set_replay_sample_fn(replay_sample_fn)
    engine.set_dataset([torch.ones([16])] * 35)
    engine.learn(progress=False)
    first_episode = ppo_policy.get_data()[:2]
    assert sum(len(step) for step in first_episode) == 4, "micro_batch_per_episode"
    assert [s["train_steps"] for s in engine.summaries] == [2, 2], "trainer.num_iteration()"


def test_dynamic_data():
    """test_dynamic_data: the ``dynamic`` loader trains on whatever the function returns,
    here every episode so far ((episode_id + 1) * 16 samples). ChatLearn's case keeps the
    ``max_replay_episode`` of the case before it; here it says -1 (keep all)."""
    engine, _, ppo_policy = rlhf_engine(
        stream_data_loader_type="dynamic", max_replay_episode=-1, num_episode=3
    )
    sample_per_episode = 16

    def replay_sample_fn(episode_replay_buffers):
        buffers = []
        for replay_buffer in episode_replay_buffers:
            buffers += replay_buffer.buffer
        episode_id = episode_replay_buffers[-1].episode_id
        assert len(buffers) == (episode_id + 1) * sample_per_episode
        return buffers

    engine.set_replay_sample_fn(replay_sample_fn)
    engine.set_dataset([torch.ones([16])] * 35)
    engine.learn(progress=False)
    assert [s["train_steps"] for s in engine.summaries] == [2, 4, 5]
    samples = [sum(len(mb["query"]) for mb in step) for step in ppo_policy.get_data()]
    assert sum(samples) == 16 + 32 + 48
