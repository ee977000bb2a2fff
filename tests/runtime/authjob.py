"""A two-process job for the rendezvous-authentication tests: the toy modules of
tests/support/toys.py colocated in one worker, so the gang is the driver and one worker.

``--hold FILE``: the driver waits (at most 120 s) for FILE to exist after the
gang has met and RPC is up, so a test can act on a running job.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from toys import Actor, Learner, Scorer, prompts

from rlhfjob import Engine, Environment, Trainer


def build() -> Engine:
    actor, scorer, learner = Actor("actor"), Scorer("scorer"), Learner("learner")

    def env_flow(batch):
        return scorer.forward_step(actor.forward_step(batch))

    def trainer_flow(batch):
        learner.train_step(batch)

    return (
        Engine(Environment(env_flow), Trainer(trainer_flow))
        .set_parameter_sync(learner, actor)
        .set_dataset(prompts(8))
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--hold", type=Path)
    args = parser.parse_args()
    if args.hold is not None:
        print(f"authjob: holding until {args.hold} exists", flush=True)
        deadline = time.monotonic() + 120
        while not args.hold.exists():
            if time.monotonic() > deadline:
                raise SystemExit(f"authjob: {args.hold} did not appear in 120 s")
            time.sleep(0.1)
    build().learn()
