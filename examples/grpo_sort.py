"""GRPO teaches a small GPT to write a prompt's digits in sorted order, with no critic.

    python examples/grpo_sort.py --episodes 40 --plot grpo_reward.png

Each prompt is answered ``group_size`` times; the replay sample manager turns
the scores into group-normalised advantages, and the GRPO trainer takes the
clipped surrogate plus a KL term to the reference. The job config is
``grpo_sort.yaml`` next to this file. The reward is the fraction of response
positions holding the right digit, so 1.0 is the maximum.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from rlhfjob import Engine, Environment, Evaluator, Trainer
from rlhfjob.algorithms.grpo import GroupPolicyInference, GRPOTrainer, group_advantages
from rlhfjob.algorithms.ppo import PolicyReference, RewardInference
from rlhfjob.algorithms.tasks import get_task

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import run_example

CONFIG = Path(__file__).with_suffix(".yaml")
REWARD_KEY = "reward/reward_mean"


def build_engine(config: dict[str, Any], *, num_prompts: int, num_eval: int) -> Engine:
    """The GRPO engine over the config's task: train prompts and held-out eval prompts."""
    policy = GroupPolicyInference("policy")
    reference = PolicyReference("reference")
    reward = RewardInference("reward")
    grpo_policy = GRPOTrainer("grpo_policy")

    def env_flow(batch: dict[str, Any]) -> dict[str, Any]:
        policy_out = policy.forward_step(batch)
        ref_out = reference.forward_step(policy_out)
        return reward.forward_step(policy_out, ref_out)

    def trainer_flow(batch: list[dict[str, Any]]) -> None:
        grpo_policy.train_step(batch)

    def eval_flow(batch: dict[str, Any]) -> dict[str, Any]:
        return reward.eval_step(policy.eval_step(batch))

    task = get_task(config["models"]["policy"]["args"]["task"])
    seed = int(config["runtime"].get("seed", 0))
    train_prompts = task.make_prompts(num_prompts, seed=seed)
    eval_prompts = task.make_prompts(num_eval, seed=seed + 10_000)
    engine = Engine(
        Environment(env_flow),
        Trainer(trainer_flow),
        Evaluator(eval_flow).set_dataset(eval_prompts),
        config=config,
    )
    engine.set_parameter_sync(grpo_policy, policy)
    engine.set_replay_sample_manager(group_advantages)
    return engine.set_dataset(train_prompts)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the example; returns the engine's per-episode summaries."""
    return run_example(
        argv,
        doc=__doc__,
        config=CONFIG,
        build_engine=build_engine,
        reward_key=REWARD_KEY,
        title="GRPO: sort the digits",
    )


if __name__ == "__main__":
    main()
