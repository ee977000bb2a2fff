"""What both examples print and plot: the reward table and the reward curve."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

__all__ = ["load_config", "parse_args", "plot_rewards", "reward_table", "run_example"]


def parse_args(
    argv: list[str] | None, *, description: str | None, config: Path
) -> argparse.Namespace:
    """The examples' flags; ``config`` is the default job config YAML."""
    parser = argparse.ArgumentParser(
        description=(description or "").split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    # Under `rlhfjob run` or a pod, the job's own manifest is the config.
    default = os.environ.get("RLHFJOB_SPEC") or str(config)
    parser.add_argument("--config", default=default, help="job config or RLHFJob manifest YAML")
    parser.add_argument("--episodes", type=int, help="override runtime.num_episode")
    parser.add_argument("--seed", type=int, help="override runtime.seed")
    parser.add_argument("--sample-per-episode", type=int, help="override runtime's")
    parser.add_argument(
        "--max-staleness", type=int, help="override runtime.max_staleness (asynchronous RL)"
    )
    parser.add_argument("--prompts", type=int, default=4096, help="training prompts")
    parser.add_argument("--eval-prompts", type=int, default=256, help="held-out prompts")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--plot", help="write the reward curve to this PNG")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or episode lines")
    return parser.parse_args(argv)


def load_config(args: argparse.Namespace) -> dict[str, Any]:
    """The job config YAML as a dict, with the command line's overrides applied."""
    config = yaml.safe_load(Path(args.config).read_text())
    if "kind" in config:  # a whole RLHFJob manifest: its spec holds the two sections
        config = {k: config["spec"][k] for k in ("runtime", "models") if k in config["spec"]}
    runtime = config.setdefault("runtime", {})
    if args.episodes is not None:
        runtime["num_episode"] = args.episodes
    if args.seed is not None:
        runtime["seed"] = args.seed
    if args.sample_per_episode is not None:
        runtime["sample_per_episode"] = args.sample_per_episode
    if args.max_staleness is not None:
        runtime["max_staleness"] = args.max_staleness
    return config


def reward_table(summaries: list[dict[str, Any]], *, reward_key: str) -> str:
    """Episode, mean sampled reward (``reward_key``) and greedy eval reward, one row each."""
    lines = ["episode  reward  eval/reward"]
    for row in summaries:
        reward = row.get(reward_key, float("nan"))
        evaluated = row.get("eval/reward", float("nan"))
        lines.append(f"{row['episode']:>7}  {reward:6.3f}  {evaluated:11.3f}")
    return "\n".join(lines)


def plot_rewards(
    summaries: list[dict[str, Any]], path: str | Path, *, reward_key: str, title: str
) -> None:
    """Write the reward curve (sampled and greedy eval) as a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed: we only write a file
    import matplotlib.pyplot as plt

    episodes = [row["episode"] for row in summaries]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(episodes, [row.get(reward_key) for row in summaries], label="sampled (train)")
    if any("eval/reward" in row for row in summaries):
        ax.plot(episodes, [row.get("eval/reward") for row in summaries], label="greedy (eval)")
    ax.axhline(0.9, color="grey", linestyle=":", linewidth=1, label="0.9 of max")
    ax.set(xlabel="episode", ylabel="mean reward", ylim=(0, 1.02), title=title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_example(
    argv: list[str] | None,
    *,
    doc: str | None,
    config: Path,
    build_engine: Callable[..., Any],
    reward_key: str,
    title: str,
) -> list[dict[str, Any]]:
    """Parse the flags, build the example's engine, learn, print the table (and plot)."""
    import torch

    args = parse_args(argv, description=doc, config=config)
    # Tiny matrices: more threads cost more in synchronisation than they save.
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    engine = build_engine(load_config(args), num_prompts=args.prompts, num_eval=args.eval_prompts)
    summaries: list[dict[str, Any]] = engine.learn(progress=not args.quiet)
    elapsed = time.perf_counter() - start
    print(reward_table(summaries, reward_key=reward_key))
    print(f"wall time {elapsed:.1f} s")
    if args.plot:
        plot_rewards(summaries, args.plot, reward_key=reward_key, title=title)
        print(f"reward curve written to {args.plot}")
    return summaries
