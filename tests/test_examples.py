"""Every example runs, with short settings, and its reward rises.

The full-length runs (reward to 0.9 of the maximum) are in the README; these
only check that learning happens, at a fraction of the episodes.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from same import assert_same

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def rewards(summaries: list[dict[str, Any]]) -> list[float]:
    return [row["reward/reward_mean"] for row in summaries]


@pytest.mark.parametrize(
    ("name", "episodes"),
    [("ppo_sort", 20), ("grpo_sort", 20)],
)
def test_example_reward_rises(name: str, episodes: int, tmp_path: Path) -> None:
    plot = tmp_path / "reward.png"
    summaries = load(name).main(
        ["--episodes", str(episodes), "--eval-prompts", "64", "--plot", str(plot), "--quiet"]
    )
    curve = rewards(summaries)
    assert len(curve) == episodes
    first, last = curve[0], sum(curve[-3:]) / 3
    assert last > first + 0.1, f"{name}: reward {first:.3f} -> {last:.3f} did not rise: {curve}"
    assert all(0.0 <= r <= 1.0 for r in curve)
    assert "eval/reward" in summaries[-1]
    assert plot.stat().st_size > 0


def test_grpo_reward_rises_with_generation_one_version_ahead(tmp_path: Path) -> None:
    """max_staleness 1: each episode trains on samples of the weights one version old,
    with the decoupled loss, whose importance weights it reports."""
    summaries = load("grpo_sort").main(
        ["--episodes", "20", "--eval-prompts", "64", "--max-staleness", "1", "--quiet"]
    )
    curve = rewards(summaries)
    first, last = curve[0], sum(curve[-3:]) / 3
    assert last > first + 0.1, f"grpo_sort at staleness 1: {first:.3f} -> {last:.3f}: {curve}"
    assert [row["staleness_max"] for row in summaries] == [0] + [1] * 19
    weights = [row["grpo_policy/importance_weight_mean"] for row in summaries]
    assert all(0.5 < w < 2.0 for w in weights) and any(abs(w - 1.0) > 1e-3 for w in weights)


def test_text_example_reward_rises(tmp_path: Path) -> None:
    """grpo_arith: a tiny Llama and its BPE tokenizer made and saved by the example, text
    prompts from its JSONL files, a reward read out of the generated text. Responses end
    at EOS (their length varies) and the sampled reward rises within 60 episodes."""
    summaries = load("grpo_arith").main(
        ["--workdir", str(tmp_path / "work"), "--episodes", "60", "--quiet"]
    )
    curve = rewards(summaries)
    first, last = sum(curve[:3]) / 3, sum(curve[-3:]) / 3
    assert last > first + 0.1, f"grpo_arith: reward {first:.3f} -> {last:.3f}: {curve}"
    lengths = [row["policy/response_length"] for row in summaries]
    assert all(1.0 < n < 4.0 for n in lengths), lengths  # answer tokens and EOS, not 4 always
    assert (tmp_path / "work" / "model" / "tokenizer.json").is_file()
    assert "eval/reward" in summaries[-1]


def _small_config(name: str, *, episodes: int, checkpoints: Path) -> dict[str, Any]:
    example = load(name)
    report = load("_report")
    args = report.parse_args(["--episodes", str(episodes)], description=None, config=example.CONFIG)
    config = report.load_config(args)
    prompts = 8
    config["runtime"].update(
        sample_per_episode=prompts if name == "grpo_sort" else 32,
        generation_batch_size=8,
        train_micro_batch_size=8,
        train_global_batch_size=8,
        num_training_epoch=2,
        eval_episode_interval=0,
        enable_eval_before_training=False,
        data_checkpoint_path=str(checkpoints),
        save_episode_interval=1,
    )
    return config


def _final_state(name: str, config: dict[str, Any]) -> dict[str, Any]:
    engine = load(name).build_engine(config, num_prompts=64, num_eval=8)
    engine.learn(progress=False)
    return {m.name: m.state_dict() for m in engine.modules}


@pytest.mark.parametrize("name", ["ppo_sort", "grpo_sort"])
def test_example_resumes_bitwise(name: str, tmp_path: Path) -> None:
    """4 episodes straight == 2 episodes, then a fresh engine resumed to 4: every
    module's weights and optimizer state, bit for bit (sampling noise on)."""
    straight = _final_state(name, _small_config(name, episodes=4, checkpoints=tmp_path / "a"))
    _final_state(name, _small_config(name, episodes=2, checkpoints=tmp_path / "b"))
    resumed = _final_state(name, _small_config(name, episodes=4, checkpoints=tmp_path / "b"))
    assert_same(straight, resumed, name)
