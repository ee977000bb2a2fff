"""The entrypoint of the Prometheus test's job: the toy modules, with an evaluator, and a
script that trips each of the chart's job alerts in turn (tests/e2e/test_prometheus.py).

``models.<actor and scorer>.args``: ``crash_generations`` (the gang's first N starts
each lose the scorer's worker once it has scored ``crash_after`` batches: repeated
gang restarts),
``good_episodes`` (in the last start, the scorer reports ``reward_mean`` 1.0 for that
many episodes and 0.0 after: a reward collapse; earlier starts report 1.0), and
``hang_after`` (in the last start, the actor stops for ``hang_seconds`` once it has
done that many batches: no progress). The reward is scripted, not learned: the toy
task does not collapse on its own. ``models.actor.args.pause`` paces its batches.
"""

from __future__ import annotations

import os
import time
from typing import Any

from toys import EvalActor, Learner, Scorer, prompts

from rlhfjob import Engine, Environment, Evaluator, Trainer
from rlhfjob_operator.contract import ENV_RESTART_GENERATION


def _generation() -> int:
    return int(os.environ.get(ENV_RESTART_GENERATION, "0"))


class ScriptedActor(EvalActor):
    def forward_step(self, data: Any, iteration: int) -> Any:
        self.batches = getattr(self, "batches", 0) + 1
        args = self.model_args
        last = _generation() >= int(args.get("crash_generations", 0))
        if last and self.batches > int(args.get("hang_after", 1 << 30)):
            time.sleep(float(args.get("hang_seconds", 0)))
        time.sleep(float(args.get("pause", 0)))
        return super().forward_step(data, iteration)


class ScriptedScorer(Scorer):
    def forward_step(self, data: Any, iteration: int) -> Any:
        self.batches = getattr(self, "batches", 0) + 1
        args = self.model_args
        crashing = _generation() < int(args.get("crash_generations", 0))
        if crashing and self.batches > int(args.get("crash_after", 0)):
            os._exit(3)  # the worker dies, as in an OOM kill: the gang restarts
        return super().forward_step(data, iteration)

    def get_and_clear_metrics(self) -> dict[str, float]:
        super().get_and_clear_metrics()
        self.episodes = getattr(self, "episodes", 0) + 1
        args = self.model_args
        last = _generation() >= int(args.get("crash_generations", 0))
        good = not last or self.episodes <= int(args.get("good_episodes", 1 << 30))
        return {
            "reward_mean": 1.0 if good else 0.0,
            "reward_min": 0.0,
            "reward_max": 1.0,
            "kl": 0.01,
        }


class LossLearner(Learner):
    def get_and_clear_metrics(self) -> dict[str, float]:
        return {"policy_loss": 0.25}


if __name__ == "__main__":
    actor, scorer = ScriptedActor("actor"), ScriptedScorer("scorer")
    learner = LossLearner("learner")

    def env_flow(batch: Any) -> Any:
        return scorer.forward_step(actor.forward_step(batch))

    def trainer_flow(batch: Any) -> None:
        learner.train_step(batch)

    def eval_flow(batch: Any) -> Any:
        return scorer.eval_step(actor.eval_step(batch))

    engine = (
        Engine(
            Environment(env_flow),
            Trainer(trainer_flow),
            Evaluator(eval_flow).set_dataset(prompts(4)),
        )
        .set_parameter_sync(learner, actor)
        .set_dataset(prompts(11))
    )
    engine.learn(progress=False)
