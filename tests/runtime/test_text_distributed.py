"""Text prompts under `rlhfjob run`: the driver reads ``runtime.data_path``, the policy's
worker tokenizes them with the tokenizer beside ``model_path``, and the file's other
columns ride the data plane to the reward; the weights equal an in-process run's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("datasets")

from textmodels import save_text_model

from conftest import final_models, rlhfjob_run, write_job
from rlhfjob_operator.spec import JobConfig

ROWS = [
    {"prompt": [{"role": "user", "content": "What is two plus three?"}], "answer": "5"},
    {"prompt": "What is seven minus four? The answer is", "answer": "3"},
    {"prompt": [{"role": "user", "content": "Sort 3 1 2."}], "answer": "1 2 3"},
    {"prompt": "Sort these digits: 2 1.", "answer": "1 2"},
]


def job(tmp_path: Path, where: str) -> tuple[dict, dict]:
    model_path = tmp_path / "tiny-llama"
    if not model_path.exists():
        save_text_model(model_path)
        data = tmp_path / "train.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    model = {"model_path": str(model_path)}
    runtime = {
        "num_episode": 2,
        "sample_per_episode": 2,
        "generation_batch_size": 2,
        "stream_data_loader_type": "dynamic",
        "max_replay_episode": 1,
        "train_micro_batch_size": 2,
        "train_global_batch_size": 2,
        "save_episode_interval": 2,
        "data_checkpoint_path": str(tmp_path / where),
        "data_path": str(tmp_path / "train.jsonl"),
    }
    sampling = {"max_new_tokens": 3, "eos_token_id": 1}  # 1: textmodels' <|end|>
    models = {
        "policy": {"args": {**model, **sampling, "group_size": 2}},
        "reference": {"args": model},
        "reward": {"args": {"kl_coef": 0.0}},
        "grpo_policy": {"trainable": True, "args": {**model, "lr": 1e-2}},
    }
    return runtime, models


def test_a_text_job_runs_distributed_as_in_process(tmp_path: Path, job_name: str) -> None:
    import textjob  # tests/runtime is on sys.path, as for every test file here (pytest)

    runtime, models = job(tmp_path, "dist")
    proc = rlhfjob_run(write_job(tmp_path, job_name, runtime, models, entry="textjob.py"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("episode ") >= 2
    runtime, models = job(tmp_path, "inproc")
    textjob.build(JobConfig.model_validate({"runtime": runtime, "models": models})).learn(
        progress=False
    )
    a, b = final_models(tmp_path / "inproc"), final_models(tmp_path / "dist")
    assert a.keys() == b.keys() and a
    for key in a:
        assert torch.equal(a[key], b[key]), key
