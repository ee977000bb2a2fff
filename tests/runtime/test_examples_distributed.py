"""Every example also runs with `rlhfjob run`: one process per model, the same weights.

Each example's own manifest (examples/<name>.yaml) is shortened and run twice:
in-process (`python examples/<name>.py --config ...`) and distributed (`rlhfjob
run`); the final checkpoints must be bitwise identical on CPU.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import final_models, rlhfjob_run
from conftest import shortened as runtime_shortened

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def shortened(name: str, tmp_path: Path, job: str, where: str) -> Path:
    entrypoint = {
        "file": str(EXAMPLES / f"{name}.py"),
        "args": ["--quiet", "--prompts", "256", "--eval-prompts", "32"],
    }
    runtime = {
        "num_episode": 3,
        "sample_per_episode": 32 if name == "ppo_sort" else 16,  # GRPO: prompts, 8 answers each
        "generation_batch_size": 16 if name == "ppo_sort" else 8,
        "train_micro_batch_size": 16,
        "train_global_batch_size": 32 if name == "ppo_sort" else 16,
        "save_episode_interval": 3,
        "eval_episode_interval": 3,
    }
    source = EXAMPLES / f"{name}.yaml"
    return runtime_shortened(source, tmp_path, job, where, runtime, entrypoint=entrypoint)


@pytest.mark.parametrize("name", ["ppo_sort", "grpo_sort"])
def test_example_distributed_equals_in_process(name, tmp_path, job_name):
    local = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / f"{name}.py"),
            "--config",
            str(shortened(name, tmp_path, job_name, "inproc")),
            "--quiet",
            "--prompts",
            "256",
            "--eval-prompts",
            "32",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert local.returncode == 0, local.stderr[-3000:]
    proc = rlhfjob_run(shortened(name, tmp_path, job_name, "dist"), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = final_models(tmp_path / "inproc"), final_models(tmp_path / "dist")
    assert a.keys() == b.keys() and a
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # The driver prints the same reward table as the in-process run.
    table = [line for line in local.stdout.splitlines() if line[:7].strip().isdigit()]
    assert table and all(row in proc.stdout for row in table)
