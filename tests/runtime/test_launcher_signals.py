"""Stopping `rlhfjob run` itself stops the job: no worker outlives its launcher.

Workers run in sessions of their own, so the launcher can stop each process
group; without more, that also kept them training after the launcher was
stopped. SIGTERM (what a terminal multiplexer, systemd or `timeout` sends)
unwinds the launcher's cleanup; SIGKILL leaves it no cleanup, so each worker
asks the kernel to SIGTERM it when its launcher dies.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import worker_pids, write_job
from rlhfjob import checkpoint as ckpt

MODELS = {"actor": {}, "scorer": {}, "learner": {"trainable": True}}


def _start(tmp_path: Path, job_name: str) -> tuple[subprocess.Popen[str], list[int]]:
    """A job that trains until stopped, once every process is past start-up."""
    checkpoints = tmp_path / "ckpt"
    runtime = dict(
        num_episode=100000,
        sample_per_episode=8,
        generation_batch_size=4,
        train_micro_batch_size=2,
        train_global_batch_size=4,
        num_training_epoch=1,
        save_episode_interval=1,
        data_checkpoint_path=str(checkpoints),
    )
    path = write_job(tmp_path, job_name, runtime, MODELS)
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlhfjob_operator.cli", "run", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and ckpt.latest_checkpoint(checkpoints) is None:
        if proc.poll() is not None:
            pytest.fail(f"the job ended before its first checkpoint: {proc.stderr.read()[-3000:]}")
        time.sleep(0.2)
    pids = worker_pids(job_name)
    assert len(pids) == 4, pids  # driver, actor, scorer, learner
    return proc, pids


def _gone(pids: list[int], timeout: float) -> list[int]:
    """The pids among ``pids`` still alive (not zombies) after up to ``timeout`` s."""
    deadline = time.monotonic() + timeout
    alive = pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [pid for pid in alive if _alive(pid)]
    return alive


def _alive(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def _kill(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_sigterm_to_the_launcher_stops_every_worker(tmp_path, job_name):
    proc, pids = _start(tmp_path, job_name)
    try:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        left = _gone(pids, timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        _kill(worker_pids(job_name))
    assert left == [], f"workers outlived their launcher: {left}"
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    # The driver's progress bar ends without a newline: the line may follow it.
    assert err.rstrip().endswith(
        "rlhfjob run: stopped by SIGTERM: every process of the job ended"
    ), err[-3000:]


def test_a_sigkilled_launcher_takes_its_workers_with_it(tmp_path, job_name):
    proc, pids = _start(tmp_path, job_name)
    try:
        proc.kill()
        proc.communicate(timeout=30)
        left = _gone(pids, timeout=30)
    finally:
        _kill(worker_pids(job_name))
        # What a SIGKILL leaves no launcher to remove: its scratch directory.
        for scratch in Path(tempfile.gettempdir()).glob(f"rlhfjob-{job_name}-*"):
            shutil.rmtree(scratch, ignore_errors=True)
    assert left == [], f"workers outlived their SIGKILLed launcher: {left}"
