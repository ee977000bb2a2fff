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
import time
from pathlib import Path
from typing import Any

import torch

from rlhfjob import Engine, Environment, Evaluator, Trainer
from rlhfjob.algorithms.grpo import GroupPolicyInference, GRPOTrainer, group_advantages
from rlhfjob.algorithms.ppo import PolicyReference, RewardInference
from rlhfjob.algorithms.tasks import get_task

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import load_config, parse_args, plot_rewards, reward_table

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
    args = parse_args(argv, description=__doc__, config=CONFIG)
    # Tiny matrices: extra threads spend more on synchronisation than they save.
    torch.set_num_threads(args.threads)
    config = load_config(args)
    start = time.perf_counter()
    engine = build_engine(config, num_prompts=args.prompts, num_eval=args.eval_prompts)
    summaries = engine.learn(progress=not args.quiet)
    elapsed = time.perf_counter() - start
    print(reward_table(summaries, reward_key=REWARD_KEY))
    print(f"wall time {elapsed:.1f} s")
    if args.plot:
        plot_rewards(summaries, args.plot, reward_key=REWARD_KEY, title="GRPO: sort the digits")
        print(f"reward curve written to {args.plot}")
    return summaries


if __name__ == "__main__":
    main()
