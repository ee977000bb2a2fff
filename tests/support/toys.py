"""Small real modules for engine tests: a noisy linear 'policy' and its trainer."""

from __future__ import annotations

import torch

from rlhfjob import BaseModule


def prompts(n: int) -> list[dict]:
    return [{"id": torch.tensor(i), "x": torch.tensor([float(i % 7), 1.0])} for i in range(n)]


class Actor(BaseModule):
    """Inference: y = w.x + noise (sampling noise from torch's global RNG)."""

    def setup(self):
        self.model = torch.nn.Linear(2, 1)
        self.calls = []

    def forward_step(self, data, iteration):
        self.calls.append((iteration, data["id"].tolist()))
        with torch.no_grad():
            y = self.model(data["x"]).squeeze(-1) + 0.1 * torch.randn(len(data["x"]))
        return {**data, "y": y}


class Scorer(BaseModule):
    def setup(self):
        self.total = 0.0
        self.n = 0

    def forward_step(self, data, iteration):
        reward = -(data["y"] - 3.0 * data["x"][:, 0]).abs()
        self.total += float(reward.sum())
        self.n += len(reward)
        return {**data, "reward": reward}

    def eval_step(self, data):
        return {"reward": -(data["y"] - 3.0 * data["x"][:, 0]).abs()}

    def get_and_clear_metrics(self):
        out = {"reward_mean": self.total / max(self.n, 1)}
        self.total, self.n = 0.0, 0
        return out


class Learner(BaseModule):
    """Trains w toward y = 3 x0 on the rewarded samples; records every call."""

    def setup(self):
        self.model = torch.nn.Linear(2, 1)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=0.05)
        self.calls = []

    def train_step(self, data, iteration):
        self.calls.append((iteration, [mb["id"].tolist() for mb in data]))
        self.optimizer.zero_grad()
        for mb in data:
            pred = self.model(mb["x"]).squeeze(-1)
            loss = ((pred - 3.0 * mb["x"][:, 0]) ** 2).mean() / len(data)
            loss.backward()
        self.optimizer.step()


class EvalActor(Actor):
    def eval_step(self, data):
        with torch.no_grad():
            return {**data, "y": self.model(data["x"]).squeeze(-1)}
