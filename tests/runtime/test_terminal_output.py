"""What `rlhfjob run` prints: the job's own lines, not third-party startup noise.

At the default ``RLHFJOB_LOG_LEVEL`` (info) no process prints gloo's
``[Gloo] Rank N is connected to N peer ranks`` lines nor torch's
"Backend ProcessGroupGloo as a ProcessGroup ... deprecated" warning, and a
run whose worker is killed still ends with the line naming the root cause; at
``debug`` the noise is all there again.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import worker_pids, write_job
from rlhfjob import checkpoint as ckpt
from rlhfjob_operator.contract import ENV_LOG_LEVEL

RUNTIME = dict(
    num_episode=1,
    sample_per_episode=8,
    generation_batch_size=4,
    train_micro_batch_size=2,
    train_global_batch_size=4,
    num_training_epoch=1,
    save_episode_interval=None,
)
MODELS = {"actor": {}, "scorer": {}, "learner": {"trainable": True}}
GLOO = "[Gloo] Rank "
DEPRECATION = "as a ProcessGroup"


def _run(path: Path, level: str | None) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != ENV_LOG_LEVEL}
    if level is not None:
        env[ENV_LOG_LEVEL] = level
    return subprocess.Popen(
        [sys.executable, "-m", "rlhfjob_operator.cli", "run", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_debug_shows_the_startup_noise(tmp_path, job_name):
    proc = _run(write_job(tmp_path, job_name, RUNTIME, MODELS), "debug")
    try:
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    both = out + err
    # Every one of the 4 processes connects to its 3 peers (gloo, then RPC's own group).
    assert both.count(GLOO) >= 4, both[-3000:]
    assert DEPRECATION in both


def test_info_hides_it_and_a_killed_worker_ends_naming_the_root_cause(tmp_path, job_name):
    checkpoints = tmp_path / "ckpt"
    runtime = {
        **RUNTIME,
        "num_episode": 100000,
        "save_episode_interval": 1,
        "data_checkpoint_path": str(checkpoints),
    }
    proc = _run(write_job(tmp_path, job_name, runtime, MODELS), None)
    try:
        # A first checkpoint: every process is past startup, where the noise was printed.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and ckpt.latest_checkpoint(checkpoints) is None:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            time.sleep(0.2)
        victims = [
            pid
            for pid in worker_pids(job_name)
            if b"RLHFJOB_ROLE=learner" in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        ]
        assert len(victims) == 1, victims
        victim = victims[0]
        os.kill(victim, signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 75, err[-3000:]
    both = out + err
    assert GLOO not in both, [line for line in both.splitlines() if GLOO in line][:3]
    assert DEPRECATION not in both
    last = err.strip().splitlines()[-1]
    assert re.match(
        rf"rlhfjob run: failed: worker learner-0 \(role learner, replica 0, pid {victim}\) "
        r"was killed by SIGKILL",
        last,
    ), last
