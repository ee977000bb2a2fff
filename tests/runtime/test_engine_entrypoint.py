"""A YAML-only job: `spec.entrypoint: {engine: grpo}` under `rlhfjob run`, no Python file.

examples/grpo_sort_engine.yaml, shortened, ends on the same weights as the hand-built
flows of examples/grpo_sort.py run in process on the same manifest (with their default
prompt counts, which the engine's task prompts match); a YAML-only job with no prompts
fails permanently (78), naming the keys to set.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

from conftest import final_models, rlhfjob_run
from conftest import shortened as runtime_shortened
from rlhfjob_operator.contract import EXIT_PERMANENT

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def shortened(tmp_path: Path, job: str, where: str) -> Path:
    manifest = EXAMPLES / "grpo_sort_engine.yaml"
    assert yaml.safe_load(manifest.read_text())["spec"]["entrypoint"] == {"engine": "grpo"}
    runtime = {
        "num_episode": 2,
        "sample_per_episode": 16,  # prompts, 8 answers each
        "generation_batch_size": 8,
        "train_micro_batch_size": 16,
        "train_global_batch_size": 16,
        "save_episode_interval": 2,
        "eval_episode_interval": 2,
    }
    return runtime_shortened(manifest, tmp_path, job, where, runtime)


def test_yaml_only_grpo_equals_the_examples_flows(tmp_path: Path, job_name: str) -> None:
    by_hand = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "grpo_sort.py"),
            "--config",
            str(shortened(tmp_path, job_name, "inproc")),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert by_hand.returncode == 0, by_hand.stderr[-3000:]
    proc = rlhfjob_run(shortened(tmp_path, job_name, "dist"), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = final_models(tmp_path / "inproc"), final_models(tmp_path / "dist")
    assert a.keys() == b.keys() and a
    assert {key.split(".")[0] for key in b} == {"policy", "reference", "grpo_policy"}
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_yaml_only_job_without_prompts_fails_naming_the_keys(
    tmp_path: Path, job_name: str, bad_inputs: Any
) -> None:
    gpt = {"n_layer": 1, "n_head": 1, "n_embd": 8, "vocab_size": 12}
    manifest = {
        "apiVersion": "rlhf.dev/v1alpha1",
        "kind": "RLHFJob",
        "metadata": {"name": job_name},
        "spec": {
            "image": "rlhfjob:dev",
            "entrypoint": {"engine": "grpo"},
            "runtime": {"num_episode": 1, "sample_per_episode": 4, "generation_batch_size": 4},
            "models": {"policy": {"args": {"gpt": gpt, "max_new_tokens": 4}}},
            "runPolicy": {"backoffLimit": 0},
        },
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(manifest))
    proc = rlhfjob_run(path, timeout=240)
    assert proc.returncode == EXIT_PERMANENT, proc.stderr[-3000:]
    assert "runtime.data_path" in proc.stderr and "models.policy.args.task" in proc.stderr
    bad_inputs.refused("entrypoint", 1)
