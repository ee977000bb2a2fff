"""Asynchronous RL (``runtime.max_staleness``): generation runs ahead of training by at most
k weight versions, and the result does not depend on timing: in process and under
`rlhfjob run` with random delays in every worker, the final weights are bitwise equal."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import rlhfjob_run, write_job
from rlhfjob import checkpoint as ckpt
from rlhfjob_operator.ledger import LEDGER, prompt_counts
from rlhfjob_operator.spec import JobConfig, SpecError, load_job_config

RUNTIME = dict(
    num_episode=5,
    sample_per_episode=8,
    generation_batch_size=4,
    train_micro_batch_size=2,
    train_global_batch_size=4,
    save_episode_interval=5,
    seed=11,
)
MODELS = {"actor": {}, "scorer": {}, "learner": {"trainable": True}}


def weights(root):
    modules, _ = ckpt.load_checkpoint(ckpt.latest_checkpoint(root))
    return {
        f"{name}.{key}": value
        for name, saved in modules.items()
        for key, value in saved["state"].get("model", {}).items()
    }


def ledger(root):
    return json.loads((ckpt.latest_checkpoint(root) / LEDGER).read_text())


def in_process(root, staleness):
    import asyncjob  # tests/runtime is on sys.path, as for every test file here (pytest)

    runtime = {**RUNTIME, "max_staleness": staleness, "data_checkpoint_path": str(root)}
    config = JobConfig.model_validate({"runtime": runtime, "models": MODELS})
    return asyncjob.build(config).learn(progress=False)


@pytest.mark.parametrize("staleness", [1, 2])
def test_staleness_is_bounded_and_the_weights_do_not_depend_on_timing(
    tmp_path, job_name, staleness, monkeypatch
):
    summaries = in_process(tmp_path / "inproc", staleness)
    entries = ledger(tmp_path / "inproc")
    assert [e["episode"] for e in entries] == [1, 2, 3, 4, 5]
    for entry, summary in zip(entries, summaries, strict=True):
        gap = entry["trained_with"] - entry["generated_with"]
        assert entry["trained_with"] == entry["episode"] - 1
        assert gap == min(staleness, entry["episode"] - 1) == summary["staleness_max"]
    generated, trained = prompt_counts(entries)
    assert generated == trained and sum(generated.values()) == 5 * 8

    # Random delays in every worker: they finish in another order each run.
    monkeypatch.setenv("RLHFJOB_TEST_JITTER", "0.03")
    runtime = {**RUNTIME, "max_staleness": staleness, "data_checkpoint_path": str(tmp_path / "d")}
    proc = rlhfjob_run(write_job(tmp_path, job_name, runtime, MODELS, "asyncjob.py"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"staleness_max {staleness}" in proc.stdout
    assert ledger(tmp_path / "d") == entries
    a, b = weights(tmp_path / "inproc"), weights(tmp_path / "d")
    assert a.keys() == b.keys() and a
    assert [k for k in a if not torch.equal(a[k], b[k])] == []

    # The staleness is real: synchronous training ends elsewhere.
    in_process(tmp_path / "sync", 0)
    synchronous = weights(tmp_path / "sync")
    assert any(not torch.equal(a[k], synchronous[k]) for k in a)


def test_staleness_with_a_sparse_sync_is_refused_by_name():
    with pytest.raises(SpecError, match=r"models\.learner\.sync_frequency"):
        load_job_config(
            {
                "runtime": {**RUNTIME, "max_staleness": 1, "data_checkpoint_path": "/tmp/x"},
                "models": {**MODELS, "learner": {"trainable": True, "sync_frequency": 2}},
            }
        )
