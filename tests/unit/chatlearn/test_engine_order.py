"""Ported from ChatLearn's chatlearn/runtime/engine.py, ``Engine.learn`` (v1.0.3 and
HEAD agree on what a module sees): each episode ends with ``save_checkpoint``, then the
evaluation, then ``after_episode``; ``save_checkpoint`` gets ``trainer.iteration``, the
train steps so far. ChatLearn has no test module for this order; a user's hooks see it."""

from __future__ import annotations

import torch

from rlhfjob import BaseModule, Engine, Environment, Evaluator, Trainer


def _run(tmp_path, *, save: int, evaluate: int, num_episode: int = 2) -> list:
    events: list = []

    class PolicyModel(BaseModule):
        def forward_step(self, data, iteration):
            data["policy_out"] = data["query"] * 2
            return data

        def eval_step(self, data):
            return data

        def before_episode(self):
            events.append("before_episode")

        def after_episode(self):
            events.append("after_episode")

    class PPOPolicy(BaseModule):
        def train_step(self, data, iteration):
            return len(data)

        def save_checkpoint(self, iteration):
            events.append(("save_checkpoint", iteration))

    class RecordingEvaluator(Evaluator):
        def post_process(self, results, eval_info):
            events.append(("eval", eval_info["episode_iteration"], eval_info["train_iteration"]))
            return results

    policy, ppo_policy = PolicyModel("policy"), PPOPolicy("ppo_policy")
    config = {
        "runtime": {
            "num_episode": num_episode,
            "sample_per_episode": 8,
            "generation_batch_size": 4,
            "train_micro_batch_size": 2,
            "train_global_batch_size": 4,
            "save_episode_interval": save,
            "eval_episode_interval": evaluate,
            "data_checkpoint_path": str(tmp_path / "ckpt"),
            "enable_resume_training": False,
        },
        "models": {"ppo_policy": {"trainable": True}},
    }
    evaluator = RecordingEvaluator(lambda b: policy.eval_step(b)).set_dataset(
        [{"query": torch.ones([2])}] * 4
    )
    Engine(
        Environment(lambda b: policy.forward_step(b)),
        Trainer(lambda b: ppo_policy.train_step(b)),
        evaluator,
        config=config,
    ).set_dataset([{"query": torch.ones([2]) * i} for i in range(16)]).learn(progress=False)
    return events


def test_learn_saves_then_evaluates_then_runs_after_episode(tmp_path):
    """engine.py ``learn``: ``save_checkpoint(episode_id)``, ``evaluate(episode_id)``,
    ``after_episode()``, in that order, every episode; two train steps per episode, so
    ``save_checkpoint`` sees 2 and 4 (``trainer.iteration``)."""
    assert _run(tmp_path, save=1, evaluate=1) == [
        "before_episode",
        ("save_checkpoint", 2),
        ("eval", 0, 2),
        "after_episode",
        "before_episode",
        ("save_checkpoint", 4),
        ("eval", 1, 4),
        "after_episode",
    ]


def test_intervals_pick_the_episodes_in_the_same_order(tmp_path):
    """engine.py ``save_checkpoint`` / ``evaluate``: each runs when its interval divides
    the 1-based episode number; the order within an episode stays."""
    events = _run(tmp_path, save=2, evaluate=3, num_episode=3)
    assert events == [
        "before_episode",
        "after_episode",
        "before_episode",
        ("save_checkpoint", 4),
        "after_episode",
        "before_episode",
        ("eval", 2, 6),
        "after_episode",
    ]
