"""PPO teaches a small GPT to write a prompt's digits in sorted order.

    python examples/ppo_sort.py --episodes 30 --plot ppo_reward.png

The flows are those of DESIGN.md: the env flow samples responses and scores
them (policy -> reference, value -> reward), the trainer flow updates the
policy and the critic, the eval flow scores greedy answers to held-out
prompts. The job config (models, hyperparameters, batch sizes) is
``ppo_sort.yaml`` next to this file; the same file runs the job on a cluster.
The reward is the fraction of response positions holding the right digit, so
1.0 is the maximum.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from rlhfjob import Engine, Environment, Evaluator, Trainer
from rlhfjob.algorithms.ppo import (
    PolicyInference,
    PolicyReference,
    PolicyTrainer,
    RewardInference,
    ValueInference,
    ValueTrainer,
)
from rlhfjob.algorithms.tasks import get_task

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import run_example

CONFIG = Path(__file__).with_suffix(".yaml")
REWARD_KEY = "reward/reward_mean"


def build_engine(config: dict[str, Any], *, num_prompts: int, num_eval: int) -> Engine:
    """The PPO engine over the config's task: train prompts and held-out eval prompts."""
    policy = PolicyInference("policy")
    reference = PolicyReference("reference")
    value = ValueInference("value")
    reward = RewardInference("reward")
    ppo_policy = PolicyTrainer("ppo_policy")
    ppo_value = ValueTrainer("ppo_value")

    def env_flow(batch: dict[str, Any]) -> dict[str, Any]:
        policy_out = policy.forward_step(batch)
        ref_out = reference.forward_step(policy_out)
        value_out = value.forward_step(policy_out)
        return reward.forward_step(policy_out, ref_out, value_out)

    def trainer_flow(batch: list[dict[str, Any]]) -> None:
        ppo_policy.train_step(batch)
        ppo_value.train_step(batch)

    def eval_flow(batch: dict[str, Any]) -> dict[str, Any]:
        return reward.eval_step(policy.eval_step(batch))

    task = get_task(config["models"]["policy"]["args"]["task"])
    seed = int(config["runtime"].get("seed", 0))
    # Different seeds for the two sets: eval prompts are (almost surely) unseen.
    train_prompts = task.make_prompts(num_prompts, seed=seed)
    eval_prompts = task.make_prompts(num_eval, seed=seed + 10_000)
    engine = Engine(
        Environment(env_flow),
        Trainer(trainer_flow),
        Evaluator(eval_flow).set_dataset(eval_prompts),
        config=config,
    )
    engine.set_parameter_sync(ppo_policy, policy).set_parameter_sync(ppo_value, value)
    return engine.set_dataset(train_prompts)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the example; returns the engine's per-episode summaries."""
    return run_example(
        argv,
        doc=__doc__,
        config=CONFIG,
        build_engine=build_engine,
        reward_key=REWARD_KEY,
        title="PPO: sort the digits",
    )


if __name__ == "__main__":
    main()
