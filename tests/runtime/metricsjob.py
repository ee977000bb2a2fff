"""A job entrypoint for the metrics tests: the toy job, whose modules also report the
metric keys PPO's do (reward mean/min/max, kl, losses), and a driver that scrapes its
own /metrics after learn() and prints the page between markers."""

from __future__ import annotations

import urllib.request

from toys import Actor, Learner, Scorer, prompts

from rlhfjob import Engine, Environment, Trainer, context

BEGIN, END = "----- metrics begin -----", "----- metrics end -----"


class RewardScorer(Scorer):
    def forward_step(self, data, iteration):
        out = super().forward_step(data, iteration)
        self.low = min(getattr(self, "low", 0.0), float(out["reward"].min()))
        return out

    def get_and_clear_metrics(self):
        out = super().get_and_clear_metrics()
        out.update(reward_min=getattr(self, "low", 0.0), reward_max=0.0, kl=0.01)
        self.low = 0.0
        return out


class LossLearner(Learner):
    def train_step(self, data, iteration):
        super().train_step(data, iteration)
        self.last = float(sum(float(mb["x"].sum()) for mb in data))

    def get_and_clear_metrics(self):
        return {"policy_loss": getattr(self, "last", 0.0), "value_loss": 0.5}


if __name__ == "__main__":
    actor, scorer, learner = Actor("actor"), RewardScorer("scorer"), LossLearner("learner")

    def env_flow(batch):
        return scorer.forward_step(actor.forward_step(batch))

    def trainer_flow(batch):
        learner.train_step(batch)

    engine = (
        Engine(Environment(env_flow), Trainer(trainer_flow))
        .set_parameter_sync(learner, actor)
        .set_dataset(prompts(11))
    )
    engine.learn(progress=False)
    assert context.env is not None
    url = f"http://127.0.0.1:{context.env.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=30) as response:
        page = response.read().decode()
    print(BEGIN)
    print(page, end="")
    print(END)
