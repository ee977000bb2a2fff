"""The entrypoint of the e2e tests' small job: the toy modules of tests/support/toys.py.

Every process of the job imports it (only the driver passes the __main__ guard).
Final weights are compared through the last checkpoint.

Fault injection for the kill tests, driver only and only in the first start of
the gang (``RLHFJOB_RESTART_GENERATION`` 0): ``--pause-save EPISODE:POINT`` holds
the save of that episode's checkpoint at POINT, writes ``paused`` into
``--pause-dir`` and waits (at most 120 s) for ``resume`` to appear there, so the
test can SIGKILL a process of its choosing at exactly that point. The points of
one save, in order: 0 before the driver gathers the modules' states from the
workers, 1..n each file written (modules, engine state, COMPLETE), n+1 the rename
of the finished directory into place.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from toys import Actor, Learner, Scorer, prompts

from rlhfjob import Engine, Environment, Trainer
from rlhfjob import checkpoint as ckpt
from rlhfjob_operator.contract import ENV_RESTART_GENERATION

_PAUSE_S = 120.0


class PacedActor(Actor):
    """The toy actor, taking at least ``models.actor.args.pause`` seconds a batch: an
    episode lasts long enough on a fast machine for a kill to land inside the run.
    ``pause_restarted``, when given, is the pause once the gang has restarted
    (``RLHFJOB_RESTART_GENERATION`` above 0)."""

    def forward_step(self, data: Any, iteration: int) -> Any:
        pause = self.model_args.get("pause", 0)
        if os.environ.get(ENV_RESTART_GENERATION, "0") != "0":
            pause = self.model_args.get("pause_restarted", pause)
        time.sleep(float(pause))
        return super().forward_step(data, iteration)


def build(config: Any = None) -> Engine:
    actor, scorer, learner = PacedActor("actor"), Scorer("scorer"), Learner("learner")

    def env_flow(batch: Any) -> Any:
        return scorer.forward_step(actor.forward_step(batch))

    def trainer_flow(batch: Any) -> None:
        learner.train_step(batch)

    return (
        Engine(Environment(env_flow), Trainer(trainer_flow), config=config)
        .set_parameter_sync(learner, actor)
        .set_dataset(prompts(11))
    )


def pause_saves(episode: int, point: int, where: Path) -> None:
    """Hold the save of checkpoint ``episode`` at ``point`` (see the module doc)."""
    from rlhfjob import resume

    seen = {"n": 0}
    marker = f"episode_{episode:06d}"

    def hold() -> None:
        if seen["n"] == point:
            (where / "paused").write_text(str(os.getpid()))
            deadline = time.monotonic() + _PAUSE_S
            while not (where / "resume").exists() and time.monotonic() < deadline:
                time.sleep(0.02)
        seen["n"] += 1

    save, write, replace = resume.save, ckpt._write_atomic, ckpt.os.replace

    def saving(run: Any, summary: Any) -> None:
        if run.episode == episode:
            hold()  # before the states are gathered
        save(run, summary)

    def write_atomic(path: Path, payload: bytes) -> None:
        if f".tmp-{marker}" in str(path):
            hold()
        write(path, payload)

    def rename(src: Any, dst: Any) -> None:
        if str(dst).endswith(marker) and f".tmp-{marker}" in str(src):
            hold()
        replace(src, dst)

    resume.save = saving
    ckpt._write_atomic = write_atomic
    ckpt.os.replace = rename  # type: ignore[assignment]


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--pause-save", help="EPISODE:POINT")
    parser.add_argument("--pause-dir", type=Path)
    args = parser.parse_args()
    if args.pause_save and os.environ.get(ENV_RESTART_GENERATION, "0") == "0":
        episode, point = (int(x) for x in args.pause_save.split(":"))
        pause_saves(episode, point, args.pause_dir)
    build().learn()
