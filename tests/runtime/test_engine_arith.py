"""The text job YAML-only: examples/grpo_arith_engine.yaml (`entrypoint: {engine: grpo}`,
every path written out) under the real `rlhfjob run`, on files made by
`grpo_arith.py --prepare-only`.

Shortened to two episodes, it ends on the same weights, bit for bit, as the example's own
run in process (`examples/grpo_arith.py --config <the same manifest>`), which, given a
manifest naming every file, runs on those files and prepares nothing. Both run in a
scratch directory, so the manifest's relative paths (`grpo-arith/...`) are used as they
ship. The four models share one worker under `rlhfjob run` (see ``shortened``).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
import yaml

from conftest import final_models
from conftest import shortened as runtime_shortened

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
MANIFEST = EXAMPLES / "grpo_arith_engine.yaml"


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def shortened(tmp_path: Path, job: str, where: str) -> Path:
    assert yaml.safe_load(MANIFEST.read_text())["spec"]["entrypoint"] == {"engine": "grpo"}
    runtime: dict = {
        "num_episode": 2,
        "sample_per_episode": 8,  # prompts, 8 answers each
        "generation_batch_size": 8,
        "train_micro_batch_size": 8,
        "train_global_batch_size": 8,
        "save_episode_interval": 2,
        "eval_episode_interval": 2,
        "enable_eval_before_training": False,
    }
    if where == "dist":
        # One worker for the four models beside the driver: each process imports torch and
        # transformers, 10-15 s of CPU on CI's two cores. One process per model, with text
        # columns crossing between them, is tests/runtime/test_text_distributed.py's.
        runtime["colocation"] = [["policy", "reference", "reward", "grpo_policy"]]
    return runtime_shortened(MANIFEST, tmp_path, job, where, runtime)


def test_yaml_only_arith_equals_the_examples_run(
    tmp_path: Path,
    job_name: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    example = load_example("grpo_arith")
    monkeypatch.chdir(tmp_path)  # the manifest's paths are relative to where it runs
    # What `python examples/grpo_arith.py --prepare-only --workdir grpo-arith` runs, in
    # this process: one interpreter (and torch, transformers) to start fewer.
    assert example.main(["--prepare-only", "--workdir", "grpo-arith", "--warmup-steps", "10"]) == []
    printed = capsys.readouterr().out
    model = tmp_path / "grpo-arith" / "model"
    # The manifest's EOS id is the one the example's tokenizer has.
    assert "models.policy.args.eos_token_id: 1\n" in printed, printed
    assert (tmp_path / "grpo-arith" / "train.jsonl").is_file() and model.is_dir()
    stamps = {p.name: p.stat().st_mtime_ns for p in model.iterdir()}

    threads = torch.get_num_threads()
    try:
        inproc = shortened(tmp_path, job_name, "inproc")
        summaries = example.main(["--config", str(inproc), "--quiet"])
    finally:
        torch.set_num_threads(threads)  # the example sets its own
    assert [row["episode"] for row in summaries] == [1, 2]
    # It ran on the prepared files: none was made again.
    assert {p.name: p.stat().st_mtime_ns for p in model.iterdir()} == stamps

    dist = shortened(tmp_path, job_name, "dist")
    proc = subprocess.run(
        [sys.executable, "-m", "rlhfjob_operator.cli", "run", str(dist)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = final_models(tmp_path / "inproc"), final_models(tmp_path / "dist")
    assert a.keys() == b.keys() and a
    assert {key.split(".")[0] for key in b} == {"policy", "reference", "grpo_policy"}
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # Two episodes trained the policy away from the reference it started equal to.
    assert any(
        not torch.equal(b[key], b[key.replace("policy.", "reference.", 1)])
        for key in b
        if key.startswith("policy.")
    )
