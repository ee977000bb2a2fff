"""A short GRPO job on text, in process: prompts (chat messages and strings) from a
JSONL file named by ``runtime.data_path``, eval prompts from a parquet file, a tiny
Hugging Face Llama and its tokenizer loaded by ``model_path``, and a reward that reads
the file's ``answer`` column."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("datasets")
pq = pytest.importorskip("pyarrow.parquet")
pa = pytest.importorskip("pyarrow")

from textmodels import save_text_model  # noqa: E402

from rlhfjob import Engine, Environment, Evaluator, Trainer  # noqa: E402
from rlhfjob.algorithms.grpo import GroupPolicyInference, GRPOTrainer, group_advantages  # noqa: E402
from rlhfjob.algorithms.ppo import PolicyReference, RewardInference  # noqa: E402
from rlhfjob.text import load_tokenizer  # noqa: E402

ROWS = [
    {"prompt": [{"role": "user", "content": "What is two plus three?"}], "answer": "5"},
    {"prompt": "What is seven minus four? The answer is", "answer": "3"},
    {"prompt": [{"role": "user", "content": "Sort 3 1 2."}], "answer": "1"},
]


def test_grpo_on_prompts_from_a_file_with_a_model_by_path(tmp_path: Path) -> None:
    model_path = save_text_model(tmp_path / "tiny-llama")
    tokenizer = load_tokenizer(model_path)
    data_path = tmp_path / "train.jsonl"
    data_path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    eval_path = tmp_path / "eval.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": "Sort 2 1.", "answer": "1"}]), eval_path)
    seen: list[str] = []

    def reward_fn(data: dict[str, Any]) -> torch.Tensor:
        """The share of response tokens that are the answer's first token, plus half the
        share of even ids: random responses then differ in score, so GRPO has a gradient."""
        seen.extend(data["answer"])
        assert len(data["prompt"]) == len(data["answer"]) == data["response_ids"].shape[0]
        ids, mask = data["response_ids"], data["response_mask"].bool()  # (B, R) each
        target = torch.tensor([tokenizer(a)["input_ids"][0] for a in data["answer"]])  # (B,)
        hits = ((ids == target[:, None]) & mask).float() + 0.5 * ((ids % 2 == 0) & mask).float()
        return hits.sum(1) / mask.sum(1).clamp(min=1)  # (B,)

    policy = GroupPolicyInference("policy")
    reference = PolicyReference("reference")
    reward = RewardInference("reward", reward_fn=reward_fn)
    trainer = GRPOTrainer("grpo_policy")

    def env_flow(batch: dict[str, Any]) -> dict[str, Any]:
        out = policy.forward_step(batch)
        return reward.forward_step(out, reference.forward_step(out))

    def trainer_flow(batch: list[dict[str, Any]]) -> None:
        trainer.train_step(batch)

    def eval_flow(batch: dict[str, Any]) -> dict[str, Any]:
        return reward.eval_step(policy.eval_step(batch))

    model = {"model_path": str(model_path)}
    sampling = {"max_new_tokens": 4, "eos_token_id": tokenizer.eos_token_id}
    config = {
        "runtime": {
            "num_episode": 2,
            "sample_per_episode": 3,
            "generation_batch_size": 3,
            "stream_data_loader_type": "dynamic",
            "train_micro_batch_size": 3,
            "train_global_batch_size": 3,
            "eval_episode_interval": 2,
            "data_path": str(data_path),
            "eval_data_path": str(eval_path),
        },
        "models": {
            "policy": {"args": {**model, **sampling, "group_size": 2}},
            "reference": {"args": model},
            "reward": {"args": {"kl_coef": 0.0}},
            "grpo_policy": {"trainable": True, "args": {**model, "lr": 1e-2}},
        },
    }
    engine = Engine(
        Environment(env_flow), Trainer(trainer_flow), Evaluator(eval_flow), config=config
    )
    engine.set_parameter_sync(trainer, policy).set_replay_sample_manager(group_advantages)
    summaries = engine.learn(progress=False)

    assert [s["episode"] for s in summaries] == [1, 2]
    assert [s["samples"] for s in summaries] == [6, 6]  # 3 prompts x group_size 2
    assert sorted(seen[:6]) == sorted(r["answer"] for r in ROWS for _ in range(2))
    assert seen[-1] == "1"  # the eval row's answer reached the reward too
    assert "eval/reward" in summaries[1] and "eval/reward" not in summaries[0]
    trained, start = trainer.named_parameters_to_sync(), reference.named_parameters_to_sync()
    assert any(not torch.equal(trained[k], start[k]) for k in start), "the policy trained"
