"""A ChatLearn YAML config given unchanged as ``config=``: the sections and value forms
of ChatLearn's tests/configs/*.yaml, read by chatlearn/utils/arguments.py (v1.0.3:
``Config._parse_params``, ``parse_value``; HEAD keeps them). The documents here are
written for this test with ChatLearn's keys; keys rlhfjob has no use for are dropped
(operator/rlhfjob_operator/spec/chatlearn.py says why), a typo is still refused."""

from __future__ import annotations

import pytest
import torch

from rlhfjob import BaseModule, Engine, Environment, SpecError, Trainer
from rlhfjob_operator.spec import load_job_config

CHATLEARN_YAML = """
runtime_env:
    platform: DLC
    excludes:
        - "*pt"
models:
    policy:
        num_gpu: 1
        gpu_per_process: 1
        tensor_model_parallel_size: 1
        trainable: False
    ppo_policy:
        num_device: 1
        gpu_per_process: 1
        trainable: True
        lora:
            enable_lora: ${enable_lora_policy:False}
            lora_dim: 32
runtime:
    debug: True
    log_interval: 1
    generation_batch_size: ${batch_size:4}
    train_micro_batch_size: 2
    train_global_batch_size: 4
    num_episode: 2
    sample_per_episode: 8
    data_shuffle: False
    data_rerank: False
    max_relay_episode: 1
    colocation:
        - policy,ppo_policy
"""


class PolicyModel(BaseModule):
    def forward_step(self, data, iteration):
        data["policy_out"] = data["query"] * 2
        return data


class PPOPolicy(BaseModule):
    def train_step(self, data, iteration):
        return len(data)


def _write(tmp_path, text):
    path = tmp_path / "rlhf.yaml"
    path.write_text(text)
    return str(path)


def test_chatlearn_yaml_is_accepted_unchanged(tmp_path, monkeypatch):
    """arguments.py ``_parse_params``: ``runtime_env`` and the Megatron/Ray keys are
    ChatLearn's business; ``${batch_size:4}`` is 4 when unset; ``num_device`` is
    ``num_gpu``; ``colocation: ["a,b"]`` is one group; relay is replay."""
    monkeypatch.delenv("batch_size", raising=False)
    config = load_job_config(_write(tmp_path, CHATLEARN_YAML))
    rt = config.runtime
    assert rt.generation_batch_size == 4 and rt.max_replay_episode == 1
    assert rt.colocation == [["policy", "ppo_policy"]]
    assert config.models["ppo_policy"].num_gpu == 1
    assert config.models["policy"].trainable is False


def test_environment_placeholders_take_the_environment(tmp_path, monkeypatch):
    """arguments.py ``parse_value``: ``${NAME:default}`` reads NAME when set."""
    monkeypatch.setenv("batch_size", "8")
    assert load_job_config(_write(tmp_path, CHATLEARN_YAML)).runtime.generation_batch_size == 8


def test_a_chatlearn_yaml_runs(tmp_path, monkeypatch):
    """The same document as an Engine's ``config=`` trains its two episodes."""
    monkeypatch.delenv("batch_size", raising=False)
    policy, ppo_policy = PolicyModel("policy"), PPOPolicy("ppo_policy")
    engine = Engine(
        Environment(lambda b: policy.forward_step(b)),
        Trainer(lambda b: ppo_policy.train_step(b)),
        config=_write(tmp_path, CHATLEARN_YAML),
    )
    engine.set_dataset([{"query": torch.ones([2]) * i} for i in range(8)])
    engine.learn(progress=False)
    assert [s["train_steps"] for s in engine.summaries] == [2, 2]


def test_the_old_rlhf_section_is_runtime():
    """arguments.py: "rlhf is deprecated, please use runtime as section name"."""
    assert load_job_config({"rlhf": {"num_episode": 3}}).runtime.num_episode == 3


def test_a_misspelled_key_is_still_refused(tmp_path):
    """ChatLearn: ``attribute ... not defined in RuntimeConfig``; here the key is named."""
    text = CHATLEARN_YAML.replace("sample_per_episode:", "sample_per_episod:")
    with pytest.raises(SpecError, match=r"runtime.sample_per_episod: unknown key"):
        load_job_config(_write(tmp_path, text))


@pytest.mark.parametrize(
    ("old", "new", "match"),
    [
        (
            "data_rerank: False",
            "data_rerank: False\n    consumed_samples: 8",
            r"runtime.consumed_samples: 8 .*resume restores",
        ),
        (
            "enable_lora: ${enable_lora_policy:False}",
            "enable_lora: True",
            r"models.ppo_policy.lora: .*no LoRA",
        ),
    ],
)
def test_a_setting_rlhfjob_would_not_honour_is_refused(tmp_path, old, new, match):
    """A ChatLearn key at its default is accepted; another value would change what the
    run computes, so it is refused, naming the key and what rlhfjob does instead."""
    with pytest.raises(SpecError, match=match):
        load_job_config(_write(tmp_path, CHATLEARN_YAML.replace(old, new)))
