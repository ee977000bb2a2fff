"""A job entrypoint for the asynchronous-RL tests and benchmark (``runtime.max_staleness``):
an actor whose samples depend on its synced weights, a scorer and a learner that trains
on those samples, so a sample's weight version changes the final weights.

``models.<name>.args``: ``pause`` (seconds each call sleeps, standing in for GPU
kernels: the benchmark's sleep-bound flow) and ``jitter`` (up to that many more
seconds, drawn from the OS, never from the job's seeded RNGs: the order in which
workers finish differs from run to run, and the result must not).
``RLHFJOB_TEST_JITTER`` sets a jitter for every model at once.
"""

from __future__ import annotations

import os
import random
import time

import torch
from toys import prompts

from rlhfjob import BaseModule, Engine, Environment, Trainer

_OS = random.SystemRandom()


def _delay(module: BaseModule) -> None:
    args = module.model_args
    jitter = float(args.get("jitter", os.environ.get("RLHFJOB_TEST_JITTER", 0)))
    time.sleep(float(args.get("pause", 0)) + _OS.uniform(0, jitter))


class Actor(BaseModule):
    """y = w.x + noise: what it samples depends on the weights it was synced."""

    def setup(self):
        self.model = torch.nn.Linear(2, 1)

    def forward_step(self, data, iteration):
        _delay(self)
        with torch.no_grad():
            y = self.model(data["x"]).squeeze(-1) + 0.1 * torch.randn(len(data["x"]))
        return {**data, "y": y}


class Scorer(BaseModule):
    def setup(self):
        self.rewards: list[float] = []

    def forward_step(self, data, iteration):
        _delay(self)
        reward = -(data["y"] - 3.0 * data["x"][:, 0]).abs()
        self.rewards.extend(reward.tolist())
        return {**data, "reward": reward}

    def get_and_clear_metrics(self):
        out = {"reward_mean": sum(self.rewards) / len(self.rewards)} if self.rewards else {}
        self.rewards = []
        return out


class Learner(BaseModule):
    """Regresses each sample halfway from its y to the task's answer: the samples, and
    so the weights that made them, shape what it learns."""

    def setup(self):
        self.model = torch.nn.Linear(2, 1)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=0.05)

    def train_step(self, data, iteration):
        _delay(self)
        self.optimizer.zero_grad()
        for mb in data:
            pred = self.model(mb["x"]).squeeze(-1)
            target = 0.5 * (mb["y"] + 3.0 * mb["x"][:, 0])
            loss = ((pred - target) ** 2).mean() / len(data)
            loss.backward()
        self.optimizer.step()


def build(config=None) -> Engine:
    actor, scorer, learner = Actor("actor"), Scorer("scorer"), Learner("learner")

    def env_flow(batch):
        return scorer.forward_step(actor.forward_step(batch))

    def trainer_flow(batch):
        learner.train_step(batch)

    return (
        Engine(Environment(env_flow), Trainer(trainer_flow), config=config)
        .set_parameter_sync(learner, actor)
        .set_dataset(prompts(13))
    )


if __name__ == "__main__":
    build().learn()
