"""A job entrypoint for the runtime tests: the toy modules of tests/unit/toys.py in workers.

Run by `rlhfjob run` (every process imports it; only the driver passes the
__main__ guard) and in-process by the tests, for the same-results checks.
Final weights are compared through the last checkpoint.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from toys import Actor, Learner, Scorer, prompts

from rlhfjob import Engine, Environment, Trainer


class Crasher(Actor):
    """An actor whose forward_step raises on the call named by models.actor.args.crash_at."""

    def forward_step(self, data, iteration):
        if iteration == self.model_args.get("crash_at"):
            raise RuntimeError(f"boom at iteration {iteration}")
        return super().forward_step(data, iteration)


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
