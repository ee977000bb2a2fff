"""Asynchronous RL resumes exactly once: a SIGKILL or SIGTERM to a random process of an
`rlhfjob run` gang at a random point, with `max_staleness` 1 or 2, and the resumed run
generates from and trains on every prompt as often as an uninterrupted run does (the
prompt ledgers are equal) and ends on its weights, bitwise.

The job is tests/runtime/asyncjob.py, whose learner trains on what the actor sampled,
so a generation lost, repeated or made on other weights changes the weights. At a kill
the env flows ahead of training are in flight; the checkpoint holds them (their
samples materialised), so the resumed run neither makes them again nor skips their
prompts. Seeds are printed; ``RLHFJOB_ASYNC_KILL_RUNS`` runs more (the note's: 10).
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from gangs import REPO, differing, final_weights, job_pids, local_run
from jobfiles import write_job
from operator_proc import wait_for

from rlhfjob import checkpoint as ckpt
from rlhfjob_operator.ledger import LEDGER, prompt_counts
from rlhfjob_operator.spec import JobConfig

RUNS = int(os.environ.get("RLHFJOB_ASYNC_KILL_RUNS", "2"))
ENTRY = REPO / "tests" / "runtime" / "asyncjob.py"
VICTIMS = ("driver", "actor", "scorer", "learner")  # RLHFJOB_ROLE of each process
RUNTIME: dict[str, Any] = {
    "num_episode": 6,
    "sample_per_episode": 8,
    "generation_batch_size": 4,
    "train_micro_batch_size": 2,
    "train_global_batch_size": 4,
    "save_episode_interval": 1,
    "seed": 5,
}
# Episodes of about 0.2 s (two train steps of 0.1 s, overlapped with two batches of
# 0.05 s): a kill lands inside one, with generation ahead in flight.
MODELS: dict[str, Any] = {
    "actor": {"args": {"pause": 0.05}},
    "scorer": {},
    "learner": {"trainable": True, "args": {"pause": 0.1}},
}


def _case(run: int) -> tuple[int, signal.Signals]:
    """Runs 0..3 take each of max_staleness 1 and 2 with each signal (0: 1 and SIGKILL,
    1: 2 and SIGTERM), then again."""
    return 1 + run % 2, signal.SIGKILL if run % 4 in (0, 3) else signal.SIGTERM


def _ledger(root: Path) -> list[dict[str, Any]]:
    latest = ckpt.latest_checkpoint(root)
    assert latest is not None, f"no complete checkpoint under {root}"
    return json.loads((latest / LEDGER).read_text())


_REFERENCE: dict[int, tuple[dict[str, Any], list[dict[str, Any]]]] = {}


def _uninterrupted(staleness: int, where: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The run in process (bitwise the same as under `rlhfjob run`: tests/runtime/
    test_async.py), once per staleness."""
    if staleness not in _REFERENCE:
        spec = importlib.util.spec_from_file_location("asyncjob", ENTRY)
        assert spec is not None and spec.loader is not None
        job = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(job)
        runtime = {**RUNTIME, "max_staleness": staleness, "data_checkpoint_path": str(where)}
        job.build(JobConfig.model_validate({"runtime": runtime, "models": MODELS})).learn(
            progress=False
        )
        _REFERENCE[staleness] = (final_weights(where), _ledger(where))
    return _REFERENCE[staleness]


@pytest.mark.parametrize("run", range(RUNS))
def test_a_random_kill_of_an_async_run_resumes_every_prompt_exactly_once(
    tmp_path: Path, run: int, capsys: pytest.CaptureFixture[str]
) -> None:
    staleness, sig = _case(run)
    weights, ledger = _uninterrupted(staleness, tmp_path / "reference")
    seed = random.SystemRandom().randrange(2**32)  # the reference run seeded `random`
    rng = random.Random(seed)
    victim, after, delay = rng.choice(VICTIMS), rng.randint(1, 4), rng.uniform(0.0, 0.3)
    name, where = f"e2e-async-{run}-{os.getpid()}", tmp_path / "ckpt"
    runtime = {**RUNTIME, "max_staleness": staleness, "data_checkpoint_path": str(where)}
    path = write_job(tmp_path, name, runtime, MODELS, ENTRY, backoff_limit=1)
    with local_run(path) as (proc, out):
        wait_for(
            lambda: any(line.startswith(f"episode {after}/") for line in out),
            what=f"episode {after} done",
            timeout=300,
        )
        time.sleep(delay)
        (pid,) = job_pids(name, victim)
        os.kill(pid, sig)
        _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "resumed from" in err, err[-3000:]
    resumed = _ledger(where)
    diff = differing(weights, final_weights(where))
    generated, trained = prompt_counts(resumed)
    with capsys.disabled():
        print(
            f"\n  async kill run {run}, seed {seed}: {sig.name} to {victim} {delay:.2f} s "
            f"after episode {after}, max_staleness {staleness}; "
            f"{sum(generated.values())} responses generated, {sum(trained.values())} trained; "
            + ("ledger equal" if resumed == ledger else "LEDGER DIFFERS")
            + ", "
            + ("identical weights" if not diff else f"DIFFERENT: {diff[:3]}")
        )
    assert resumed == ledger
    assert (generated, trained) == prompt_counts(ledger)
    assert diff == []
