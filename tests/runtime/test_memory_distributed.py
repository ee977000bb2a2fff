"""The trainers' memory settings under `rlhfjob run`: a GRPO text job whose trainer cuts
micro-batches by a token budget, checkpoints its layers and runs in bf16 autocast, and
whose reference and policy infer in bfloat16 weights (the policy's synced from the
float32 trainer, cast by the receiver), ends with the weights of the same job run in
process (the settings act inside the trainer's worker, whichever process it is)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("datasets")

from textmodels import save_text_model

from conftest import final_models, rlhfjob_run, write_job
from rlhfjob_operator.spec import JobConfig

ROWS = [
    {"prompt": "What is two plus three? The answer is", "answer": "5"},
    {"prompt": "Sort 3 1 2.", "answer": "1 2 3"},
    {"prompt": "What is seven minus four?", "answer": "3"},
    {"prompt": "Add 1 2 3 4 5 6 7 8 9 0 and say the sum.", "answer": "45"},
]


def job(tmp_path: Path, where: str) -> tuple[dict, dict]:
    model_path = tmp_path / "tiny-llama"
    if not model_path.exists():
        save_text_model(model_path)
        (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    model = {"model_path": str(model_path)}
    runtime = {
        "num_episode": 2,
        "sample_per_episode": 4,
        "generation_batch_size": 4,
        "stream_data_loader_type": "dynamic",
        "max_replay_episode": 1,
        "train_micro_batch_size": 4,
        "train_global_batch_size": 4,
        "save_episode_interval": 2,
        "data_checkpoint_path": str(tmp_path / where),
        "data_path": str(tmp_path / "train.jsonl"),
    }
    memory = {
        "train_max_tokens_per_micro_batch": 30,
        "gradient_checkpointing": True,
        "mixed_precision": "bf16",
    }
    models = {
        "policy": {
            "args": {
                **model,
                "dtype": "bfloat16",  # synced from the float32 trainer: the receiver casts
                "max_new_tokens": 4,
                "eos_token_id": 1,
                "group_size": 2,
            }
        },
        "reference": {"args": {**model, "dtype": "bfloat16"}},
        "reward": {"args": {"kl_coef": 0.0}},
        "grpo_policy": {"trainable": True, "args": {**model, **memory, "lr": 1e-2}},
    }
    return runtime, models


def test_memory_settings_run_distributed_as_in_process(tmp_path: Path, job_name: str) -> None:
    import textjob  # tests/runtime is on sys.path, as for every test file here (pytest)

    runtime, models = job(tmp_path, "dist")
    proc = rlhfjob_run(write_job(tmp_path, job_name, runtime, models, entry="textjob.py"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("episode ") >= 2
    runtime, models = job(tmp_path, "inproc")
    engine = textjob.build(JobConfig.model_validate({"runtime": runtime, "models": models}))
    summaries = engine.learn(progress=False)
    assert all(s["grpo_policy/micro_batches"] > 1 for s in summaries), summaries
    a, b = final_models(tmp_path / "inproc"), final_models(tmp_path / "dist")
    assert a.keys() == b.keys() and a
    assert b["reference.model.model.embed_tokens.weight"].dtype == torch.bfloat16
    policy = b["policy.model.model.embed_tokens.weight"]
    trained = b["grpo_policy.model.model.embed_tokens.weight"]
    assert policy.dtype == torch.bfloat16 and torch.equal(policy, trained.bfloat16())
    assert b["grpo_policy.model.model.embed_tokens.weight"].dtype == torch.float32
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("fsdp", [True, False], ids=["fsdp", "ddp"])
def test_two_trainer_replicas_sharded_or_not_train_as_one_trainer(
    tmp_path: Path, job_name: str, fsdp: bool
) -> None:
    """Two replicas of the trainer (gloo), sharded by FSDP2 (each holding half of every
    parameter) or data parallel, train as the one trainer in process: the same samples,
    gradients averaged before the clip, and, sharded, whole tensors in the checkpoint and
    in the policy's sync. The per-sequence loss mean makes two shares of two samples
    average to the batch's loss."""
    import textjob

    def two_replica_job(where: str, replicas: int) -> tuple[dict, dict]:
        runtime, models = job(tmp_path, where)
        runtime["colocation"] = [["policy", "reference", "reward"]]
        trainer = models["grpo_policy"]
        trainer.update(num_replica=replicas, generation_batch_size=2)
        trainer["args"] = {
            "model_path": trainer["args"]["model_path"],
            "lr": 1e-2,
            "max_grad_norm": 0.05,  # clipped every step: the clip must see the average
            "loss_agg_mode": "seq-mean-token-mean",
            "fsdp": fsdp,
        }
        for name in ("policy", "reference"):
            models[name]["args"].pop("dtype")
        return runtime, models

    runtime, models = two_replica_job("dist", 2)
    proc = rlhfjob_run(write_job(tmp_path, job_name, runtime, models, entry="textjob.py"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    shards = r"grpo_policy: FSDP2 over 2 replicas; replica (\d) holds ([\d,]+) of ([\d,]+) "
    held = re.findall(shards, proc.stdout + proc.stderr)  # the workers' lines, relayed
    assert sorted(r for r, _, _ in held) == (["0", "1"] if fsdp else []), proc.stdout[-3000:]
    counts = [(int(h.replace(",", "")), int(t.replace(",", ""))) for _, h, t in held]
    assert all(2 * h <= t + 1000 for h, t in counts), counts  # about half each
    assert not counts or sum(h for h, _ in counts) == counts[0][1], counts  # no overlap
    runtime, models = two_replica_job("inproc", 1)
    textjob.build(JobConfig.model_validate({"runtime": runtime, "models": models})).learn(
        progress=False
    )
    a, b = final_models(tmp_path / "inproc"), final_models(tmp_path / "dist")
    assert a.keys() == b.keys() and a
    for key in a:
        assert a[key].shape == b[key].shape, key
        assert torch.allclose(a[key], b[key], atol=1e-5), (key, (a[key] - b[key]).abs().max())
    trained = b["grpo_policy.model.model.embed_tokens.weight"]
    assert torch.equal(b["policy.model.model.embed_tokens.weight"], trained)
