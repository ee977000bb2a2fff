"""A job entrypoint for the runtime tests: the toy modules of tests/support/toys.py in workers.

Run by `rlhfjob run` (every process imports it; only the driver passes the
__main__ guard) and in-process by the tests, for the same-results checks.
Final weights are compared through the last checkpoint.
"""

from __future__ import annotations

import resource

import torch
from toys import Actor, Learner, Scorer, prompts

from rlhfjob import Engine, Environment, Trainer


class Crasher(Actor):
    """The toy actor, configurable from models.actor.args: ``crash_at`` raises on that
    call; ``blob`` adds that many floats per sample (bulk that must not reach the driver)."""

    def forward_step(self, data, iteration):
        if iteration == self.model_args.get("crash_at"):
            raise RuntimeError(f"boom at iteration {iteration}")
        out = super().forward_step(data, iteration)
        if self.model_args.get("blob"):
            out["blob"] = torch.ones(len(data["x"]), int(self.model_args["blob"]))
        return out


def build(config=None) -> tuple[Engine, Learner]:
    actor, scorer, learner = Crasher("actor"), Scorer("scorer"), Learner("learner")

    def env_flow(batch):
        return scorer.forward_step(actor.forward_step(batch))

    def trainer_flow(batch):
        learner.train_step(batch)

    engine = (
        Engine(Environment(env_flow), Trainer(trainer_flow), config=config)
        .set_parameter_sync(learner, actor)
        .set_dataset(prompts(11))
    )
    return engine, learner


if __name__ == "__main__":
    build()[0].learn()
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"driver peak RSS {peak_kb / 1024:.1f} MB")
