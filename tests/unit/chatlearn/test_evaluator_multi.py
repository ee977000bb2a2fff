"""Ported from ChatLearn's tests/eval/test_evaluator_multi.py (v1.0.3): an eval flow that
returns two reward models' outputs (``return r, r1``); ``engine.eval()`` gives each
model's batches under its name. ChatLearn's ``EvalEngine(models, evaluator=...)`` takes
the model list too; here the flow names its models, so ``EvalEngine(evaluator)``."""

from __future__ import annotations

import torch

from rlhfjob import BaseModule, Engine, EvalEngine, Evaluator


class PolicyModel(BaseModule):
    def forward_step(self, data, iteration):
        return {"policy": ["policy_" + item for item in data["query"]]}

    def build_dataset(self, prompts, is_eval):
        return [{"query": p} for p in prompts]


class RewardModel(BaseModule):
    def eval_step(self, data):
        return {"reward": ["reward_" + item for item in data["policy"]]}


class RewardModel2(BaseModule):
    def eval_step(self, data):
        return {"reward2": ["reward2_" + item for item in data["policy"]]}


def test_evaluator_multi():
    """test_evaluator_multi: both outputs, each under its model, every prompt once."""
    policy, reward, reward2 = PolicyModel("policy"), RewardModel("reward"), RewardModel2("reward2")

    def eval_flow(batch):
        p = policy.forward_step(batch)
        r = reward.eval_step(p)
        r1 = reward2.eval_step(p)
        return r, r1

    engine = EvalEngine(Evaluator(eval_flow), config={"runtime": {"generation_batch_size": 4}})
    train_prompts = ["query_" + str(i) for i in range(10, 91)]
    engine.set_dataset(train_prompts)
    results = engine.eval()
    for model_name in ["reward", "reward2"]:
        for batch in results[model_name]:
            assert model_name in batch.keys()  # noqa: SIM118 (ChatLearn's line)
        total = sum(len(each[model_name]) for each in results[model_name])
        assert total == len(train_prompts)


def test_default_metrics_of_two_outputs_are_named_by_model():
    """The episode loop reports the default post_process's results (every model's
    batches) as the means of their numeric keys, ``<model>/<key>`` when there are
    several models."""

    class Scored(BaseModule):
        def __init__(self, name, value):
            super().__init__(name)
            self.value = value

        def eval_step(self, data):
            return {"score": torch.full((len(data["policy"]),), self.value)}

    policy, a, b = PolicyModel("policy"), Scored("a", 1.0), Scored("b", 3.0)

    def eval_flow(batch):
        p = policy.forward_step(batch)
        return a.eval_step(p), b.eval_step(p)

    evaluator = Evaluator(eval_flow).set_dataset([f"q{i}" for i in range(6)])
    engine = Engine(
        evaluator=evaluator,
        config={
            "runtime": {
                "num_episode": 1,
                "sample_per_episode": 4,
                "generation_batch_size": 4,
                "eval_episode_interval": 1,
            }
        },
    )
    (summary,) = engine.learn(progress=False)
    assert summary["eval/a/score"] == 1.0 and summary["eval/b/score"] == 3.0
