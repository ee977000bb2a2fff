"""ChatLearn's runtime keys with its defaults and sentinels, as chatlearn/configs/
runtime_config.py (HEAD) and chatlearn/utils/arguments.py (v1.0.3) define them:
``eval_episode_interval`` defaults to 0, "will not eval"; ``max_replay_episode`` -1
"replays all episodes"."""

from __future__ import annotations

import pytest
import torch

from rlhfjob import BaseModule, Engine, Environment, Evaluator, SpecError
from rlhfjob_operator.spec import JobConfig, load_job_config


def test_chatlearn_defaults_and_sentinels_are_accepted():
    rt = JobConfig.model_validate({"runtime": {}}).runtime
    assert rt.eval_episode_interval == 0 and rt.max_replay_episode == 0
    rt = JobConfig.model_validate(
        {"runtime": {"eval_episode_interval": 0, "max_replay_episode": -1}}
    ).runtime
    assert rt.eval_episode_interval == 0 and rt.max_replay_episode == -1


@pytest.mark.parametrize(
    ("key", "value"), [("eval_episode_interval", -1), ("max_replay_episode", -2)]
)
def test_values_below_the_sentinels_are_refused_naming_the_key(key, value):
    with pytest.raises(SpecError, match=key):
        load_job_config({"runtime": {key: value}})


class Policy(BaseModule):
    def forward_step(self, data, iteration):
        return data

    def eval_step(self, data):
        self.evaluated = True
        return data


def test_eval_episode_interval_0_never_evaluates():
    """The engine with an evaluator and ChatLearn's default interval runs no evaluation."""
    policy = Policy("policy")
    policy.evaluated = False
    engine = Engine(
        Environment(lambda b: policy.forward_step(b)),
        evaluator=Evaluator(lambda b: policy.eval_step(b)).set_dataset([{"x": torch.ones(1)}]),
        config={"runtime": {"num_episode": 2, "sample_per_episode": 2}},
    ).set_dataset([{"x": torch.ones(1)}] * 2)
    summaries = engine.learn(progress=False)
    assert not policy.evaluated
    assert not any(key.startswith("eval/") for s in summaries for key in s)
