"""A short GRPO job on text, in process: prompts (chat messages and strings) from a
JSONL file named by ``runtime.data_path``, eval prompts from a parquet file, a tiny
Hugging Face Llama and its tokenizer loaded by ``model_path``, and a reward that reads
the file's ``answer`` column: a batch-form function given to the module, or TRL-style
functions over the decoded text and a reward model named in the job's settings."""

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

import rewardfns  # noqa: E402
from textmodels import save_reward_model, save_text_model  # noqa: E402

from rlhfjob import Engine, Environment, Evaluator, Trainer  # noqa: E402
from rlhfjob.algorithms.grpo import GroupPolicyInference, GRPOTrainer, group_advantages  # noqa: E402
from rlhfjob.algorithms.ppo import PolicyReference, RewardInference  # noqa: E402
from rlhfjob.data import collate  # noqa: E402
from rlhfjob.rollout import CachedEngine  # noqa: E402
from rlhfjob.text import load_tokenizer  # noqa: E402
from rlhfjob_operator.spec import JobConfig  # noqa: E402

ROWS = [
    {"prompt": [{"role": "user", "content": "What is two plus three?"}], "answer": "5"},
    {"prompt": "What is seven minus four? The answer is", "answer": "3"},
    {"prompt": [{"role": "user", "content": "Sort 3 1 2."}], "answer": "1"},
]


def _run_job(
    tmp_path: Path, reward: RewardInference, reward_args: dict[str, Any], model_path: Path
) -> tuple[list[dict[str, Any]], GRPOTrainer, PolicyReference]:
    """Two GRPO episodes of 3 prompts x 2 from a JSONL file, an eval from parquet."""
    tokenizer = load_tokenizer(model_path)
    data_path = tmp_path / "train.jsonl"
    data_path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    eval_path = tmp_path / "eval.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": "Sort 2 1.", "answer": "1"}]), eval_path)
    policy = GroupPolicyInference("policy")
    reference = PolicyReference("reference")
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
            "max_replay_episode": 1,
            "train_micro_batch_size": 3,
            "train_global_batch_size": 3,
            "eval_episode_interval": 2,
            "data_path": str(data_path),
            "eval_data_path": str(eval_path),
        },
        "models": {
            "policy": {"args": {**model, **sampling, "group_size": 2}},
            "reference": {"args": model},
            "reward": {"args": {"kl_coef": 0.0, **reward_args}},
            "grpo_policy": {"trainable": True, "args": {**model, "lr": 1e-2}},
        },
    }
    engine = Engine(
        Environment(env_flow), Trainer(trainer_flow), Evaluator(eval_flow), config=config
    )
    engine.set_parameter_sync(trainer, policy).set_replay_sample_manager(group_advantages)
    return engine.learn(progress=False), trainer, reference


def _trained(trainer: GRPOTrainer, reference: PolicyReference) -> bool:
    trained, start = trainer.named_parameters_to_sync(), reference.named_parameters_to_sync()
    return any(not torch.equal(trained[k], start[k]) for k in start)


def test_grpo_on_prompts_from_a_file_with_a_model_by_path(tmp_path: Path) -> None:
    model_path = save_text_model(tmp_path / "tiny-llama")
    tokenizer = load_tokenizer(model_path)
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

    reward = RewardInference("reward", reward_fn=reward_fn)
    summaries, trainer, reference = _run_job(tmp_path, reward, {}, model_path)

    assert [s["episode"] for s in summaries] == [1, 2]
    assert [s["samples"] for s in summaries] == [6, 6]  # 3 prompts x group_size 2
    assert sorted(seen[:6]) == sorted(r["answer"] for r in ROWS for _ in range(2))
    assert seen[-1] == "1"  # the eval row's answer reached the reward too
    assert "eval/reward" in summaries[1] and "eval/reward" not in summaries[0]
    assert _trained(trainer, reference), "the policy trained"


def test_grpo_with_trl_reward_functions_and_a_reward_model_over_text(tmp_path: Path) -> None:
    """The verifier, a shaping function and a recorder by "package.module:function", then a
    reward model, weighted: what they are given is the decoded text of the policy's
    responses, chat-shaped where the prompt was chat messages."""
    model_path = save_text_model(tmp_path / "tiny-llama")
    tokenizer = load_tokenizer(model_path)
    rewardfns.CALLS.clear()
    reward_args = {
        "reward_fn": [
            "rlhfjob.rewards.arith:exact_answer",
            "rewardfns:digit_share",
            "rewardfns:record",
        ],
        "reward_model_path": str(save_reward_model(tmp_path / "tiny-rm")),
        "reward_weights": [1.0, 1.0, 0.01, 0.1],
        "tokenizer_path": str(model_path),
    }
    summaries, trainer, reference = _run_job(
        tmp_path, RewardInference("reward"), reward_args, model_path
    )

    assert [s["samples"] for s in summaries] == [6, 6]
    for key in ("exact_answer_mean", "digit_share_mean", "record_mean", "tiny-rm_mean"):
        assert all(f"reward/{key}" in s for s in summaries), key
    train_calls, eval_call = rewardfns.CALLS[:-1], rewardfns.CALLS[-1]
    for call in train_calls:
        for prompt, completion, ids in zip(
            call["prompts"], call["completions"], call["completion_ids"], strict=True
        ):
            text = completion if isinstance(prompt, str) else completion[0]["content"]
            if not isinstance(prompt, str):
                assert completion == [{"role": "assistant", "content": text}]
            assert text == tokenizer.decode(ids, skip_special_tokens=True)
            assert 1 <= len(ids) <= 4  # up to EOS, at most max_new_tokens
        assert len(call["answer"]) == len(call["prompts"]) == 6  # 3 prompts x group_size 2
        assert isinstance(call["trainer_state"].global_step, int)
    assert sorted(a for c in train_calls[:1] for a in c["answer"]) == sorted(
        r["answer"] for r in ROWS for _ in range(2)
    )
    assert eval_call["prompts"] == ["Sort 2 1."] and eval_call["answer"] == ["1"]
    assert "eval/reward" in summaries[1]
    assert _trained(trainer, reference), "the policy trained"


def test_the_policy_ends_responses_at_its_stop_strings(tmp_path: Path) -> None:
    """``stop_strings`` reach the rollout engine: each response ends at the first token
    that completes one of them (kept), is padded after it, and counts in the length
    metrics; without a model_path there is no tokenizer to read them, which says so."""

    model_path = save_text_model(tmp_path / "tiny-llama")
    tokenizer = load_tokenizer(model_path)
    stops = list("aeiou0123456789")  # most tokens hold one: responses end early
    args = {"model_path": str(model_path), "max_new_tokens": 12, "stop_strings": stops}
    policy = GroupPolicyInference("policy")
    policy.bind(JobConfig.model_validate({"models": {"policy": {"args": args}}}))
    policy.setup()
    assert isinstance(policy.engine, CachedEngine)
    torch.manual_seed(0)
    batch = policy.build_dataset([{"prompt": "What is two plus three?"}] * 2)
    out = policy.forward_step(collate(batch))
    lengths = out["response_mask"].sum(1)
    assert int(lengths.min()) < 12, "some response met a stop string"
    for ids, n in zip(out["response_ids"], lengths.tolist(), strict=True):
        said = tokenizer.decode(ids[:n])
        before = tokenizer.decode(ids[: n - 1])
        assert n == 12 or any(s in said for s in stops), said
        assert not any(s in before for s in stops), before  # the first completion ends it
        assert (ids[n:] == policy.pad_token_id).all()
    assert policy.get_and_clear_metrics()["response_length"] == float(lengths.float().mean())

    del args["model_path"]
    args["gpt"] = {"n_layer": 1, "n_head": 1, "n_embd": 8, "vocab_size": 12}
    with pytest.raises(ValueError, match="models.policy.args.stop_strings needs a tokenizer"):
        GroupPolicyInference("policy").bind(
            JobConfig.model_validate({"models": {"policy": {"args": args}}})
        )
