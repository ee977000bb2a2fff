"""`rlhfjob run`: each model in its own process, the same results as in-process, clear failures."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import rlhfjob_run, worker_pids, write_job
from rlhfjob import checkpoint as ckpt
from rlhfjob_operator.contract import ENV_LOG_LEVEL, LOG_DEBUG
from rlhfjob_operator.spec import JobConfig

RUNTIME = dict(
    num_episode=3,
    sample_per_episode=8,
    generation_batch_size=4,
    train_micro_batch_size=2,
    train_global_batch_size=4,
    num_training_epoch=2,
    save_episode_interval=3,
)
MODELS = {"actor": {}, "scorer": {}, "learner": {"trainable": True}}


def in_process(tmp_path, runtime, models):
    import toyjob  # tests/runtime is on sys.path, as for every test file here (pytest)

    config = JobConfig.model_validate(
        {"runtime": {**runtime, "data_checkpoint_path": str(tmp_path / "inproc")}, "models": models}
    )
    engine, _ = toyjob.build(config)
    engine.learn(progress=False)
    return ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "inproc"))[0]


def distributed(tmp_path, name, runtime, models):
    path = write_job(
        tmp_path, name, {**runtime, "data_checkpoint_path": str(tmp_path / "dist")}, models
    )
    proc = rlhfjob_run(path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "dist"))[0]


def flat(states):
    out = {}
    for name, saved in states.items():
        for key, value in saved["state"].get("model", {}).items():
            out[f"{name}.{key}"] = value
    return out


def test_same_weights_bitwise_as_in_process(tmp_path, job_name):
    proc, remote = distributed(tmp_path, job_name, RUNTIME, MODELS)
    local = in_process(tmp_path, RUNTIME, MODELS)
    a, b = flat(local), flat(remote)
    assert a.keys() == b.keys() and a
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert torch.equal(
        local["learner"]["state"]["optimizer"]["state"][0]["exp_avg"],
        remote["learner"]["state"]["optimizer"]["state"][0]["exp_avg"],
    )
    # What the user sees: the driver's episode lines, and prefixed worker output.
    assert proc.stdout.count("episode ") >= 3
    assert "samples/s" in proc.stdout


def test_an_env_flow_returning_two_outputs_trains_on_their_merged_rows(tmp_path, job_name):
    """ChatLearn's ``return value_out, reward_out``: under `rlhfjob run` each trainer pulls
    a sample's row from the actor and from the scorer and merges them; the weights are
    toyjob's (one output carrying every key), bitwise."""
    runtime = {**RUNTIME, "num_episode": 2, "save_episode_interval": 2}
    path = write_job(
        tmp_path,
        job_name,
        {**runtime, "data_checkpoint_path": str(tmp_path / "dist")},
        MODELS,
        entry="tuplejob.py",
    )
    proc = rlhfjob_run(path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    remote = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "dist"))[0]
    local = flat(in_process(tmp_path, runtime, MODELS))
    assert local.keys() == flat(remote).keys() and local
    for key, value in flat(remote).items():
        assert torch.equal(value, local[key]), key


def test_two_trainer_replicas_match_within_tolerance(tmp_path, job_name):
    models = {**MODELS, "learner": {"trainable": True, "num_replica": 2}}
    _, remote = distributed(tmp_path, job_name, RUNTIME, models)
    local = in_process(tmp_path, RUNTIME, MODELS)
    a, b = flat(local), flat(remote)
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key


def test_a_global_batch_smaller_than_the_trainer_replicas_fails_by_name(tmp_path, job_name):
    # 9 samples in global batches of 4: the last one's single sample cannot feed 2
    # replicas; one replica with no share would leave the other in the all-reduce.
    runtime = {**RUNTIME, "sample_per_episode": 9, "data_checkpoint_path": str(tmp_path)}
    models = {**MODELS, "learner": {"trainable": True, "num_replica": 2}}
    proc = rlhfjob_run(write_job(tmp_path, job_name, runtime, models))
    assert proc.returncode != 0
    assert "a global batch of 1 sample(s) cannot give each of the 2" in proc.stderr, proc.stderr
    assert "models.learner.num_replica" in proc.stderr


def test_two_inference_replicas_take_batches_in_turn(tmp_path, job_name, monkeypatch):
    # The toy actor prints nothing of its own: at debug, gloo's startup lines show the
    # second replica's [actor-1] prefix.
    monkeypatch.setenv(ENV_LOG_LEVEL, LOG_DEBUG)
    models = {**MODELS, "actor": {"num_replica": 2}}
    proc, remote = distributed(tmp_path, job_name, RUNTIME, models)
    assert len(remote["actor"]["replica_rng"]) == 2
    assert "[actor-1]" in proc.stdout or "[actor-1]" in proc.stderr


def test_worker_exception_fails_the_driver_with_the_remote_traceback(tmp_path, job_name):
    models = {**MODELS, "actor": {"args": {"crash_at": 3}}}
    path = write_job(tmp_path, job_name, {**RUNTIME, "data_checkpoint_path": str(tmp_path)}, models)
    proc = rlhfjob_run(path)
    assert proc.returncode == 78, proc.stderr[-3000:]
    assert "boom at iteration 3" in proc.stderr
    assert "actor-0 (role actor, replica 0, pid" in proc.stderr
    assert "toyjob.py" in proc.stderr, "the remote traceback names the user's file"


def test_killed_worker_fails_fast_and_names_it(tmp_path, job_name):
    runtime = {**RUNTIME, "num_episode": 100000, "save_episode_interval": None}
    path = write_job(tmp_path, job_name, runtime, MODELS)
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlhfjob_operator.cli", "run", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        victim = None
        while time.monotonic() < deadline and victim is None:
            for pid in worker_pids(job_name):
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                if b"RLHFJOB_ROLE=learner" in environ:
                    victim = pid
            time.sleep(0.2)
        assert victim is not None
        time.sleep(3)  # let it train a little
        os.kill(victim, signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 75, err[-3000:]
    assert f"learner-0 (role learner, replica 0, pid {victim})" in err
    assert "SIGKILL" in err


def test_unused_model_and_missing_worker_are_refused(tmp_path, job_name):
    runtime = {**RUNTIME, "save_episode_interval": None}
    path = write_job(tmp_path, job_name, runtime, {**MODELS, "extra": {}})
    proc = rlhfjob_run(path)
    assert proc.returncode == 78
    assert "config models ['extra'] name no module of this engine" in proc.stderr


@pytest.mark.parametrize("missing", ["entry.py"])
def test_missing_entrypoint_is_a_permanent_error(tmp_path, job_name, missing):
    runtime = {**RUNTIME, "save_episode_interval": None}
    path = write_job(tmp_path, job_name, runtime, MODELS, entry=missing)
    proc = rlhfjob_run(path)
    assert proc.returncode == 78
    assert "spec.entrypoint.file" in proc.stderr and "does not exist" in proc.stderr


def test_startup_times_out_naming_the_missing_ranks():
    from rlhfjob.comm import rendezvous
    from rlhfjob.comm.env import WorkerEnv
    from rlhfjob.comm.errors import StartupError
    from rlhfjob_operator.local import free_port

    env = WorkerEnv(
        job_name="lonely",
        role="driver",
        models=(),
        replica=0,
        rank=0,
        world_size=3,
        master_addr="127.0.0.1",
        master_port=free_port(),
        spec_path="x",
        checkpoint_dir="",
        metrics_port=0,
        restart_generation=0,
        secret="s" * 32,
    )
    with pytest.raises(StartupError, match=r"ranks \[1, 2\] of 3 did not reach"):
        rendezvous.start(env, startup_timeout=2)


def test_worker_env_names_missing_variables():
    from rlhfjob.comm.env import WorkerEnv

    with pytest.raises(ValueError, match="RLHFJOB_ROLE is not set"):
        WorkerEnv.from_environ({"RANK": "0", "WORLD_SIZE": "1"})
    with pytest.raises(ValueError, match="RANK=3 is outside"):
        WorkerEnv.from_environ({"RANK": "3", "WORLD_SIZE": "2"})


def test_driver_memory_stays_flat_when_samples_grow_tenfold(tmp_path, job_name):
    """Samples carry 256 KB each; at 10x that is 160 MB more data, none of it in the driver."""

    def peak(samples: int) -> float:
        runtime = {
            **RUNTIME,
            "num_episode": 2,
            "sample_per_episode": samples,
            "generation_batch_size": 32,
            "train_micro_batch_size": 32,
            "train_global_batch_size": 64,
            "save_episode_interval": None,
        }
        models = {**MODELS, "actor": {"args": {"blob": 65536}}}
        path = write_job(tmp_path, f"{job_name}-{samples}"[:50], runtime, models)
        proc = rlhfjob_run(path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        line = next(x for x in proc.stdout.splitlines() if x.startswith("driver peak RSS"))
        return float(line.split()[3])

    small, large = peak(64), peak(640)
    print(f"driver peak RSS: {small:.0f} MB at 64 samples/episode, {large:.0f} MB at 640")
    assert large < small * 1.15 + 20, (small, large)


def test_distributed_resume_equals_an_uninterrupted_run(tmp_path, job_name):
    where = {"data_checkpoint_path": str(tmp_path / "dist")}
    first = write_job(
        tmp_path,
        job_name,
        {**RUNTIME, **where, "num_episode": 2, "save_episode_interval": 1},
        MODELS,
    )
    assert rlhfjob_run(first).returncode == 0
    again = write_job(
        tmp_path,
        job_name,
        {**RUNTIME, **where, "num_episode": 4, "save_episode_interval": 1},
        MODELS,
    )
    proc = rlhfjob_run(again)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stderr and "(episode 2)" in proc.stderr
    remote = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "dist"))[0]
    local = in_process(tmp_path, {**RUNTIME, "num_episode": 4, "save_episode_interval": 4}, MODELS)
    a, b = flat(local), flat(remote)
    assert a.keys() == b.keys() and a
    for key in a:
        assert torch.equal(a[key], b[key]), key
