"""Entrypoint of the runtime benchmark jobs (bench/runtime_bench.py starts them).

``transfer MB``: a producer worker makes one MB-sized tensor per batch and a
consumer worker on the same host takes it as input; the consumer reports the
time from the producer's return to its own start (the worker-to-worker hop).
``sync MB``: a trainer and its inference twin in two workers, parameter sync
of an MB-sized model after every (empty) training step.
``ppo``: the PPO example's engine (examples/ppo_sort.py), in-process when run
with plain python, distributed under ``rlhfjob run``.
Each job prints its per-episode summaries as one JSON line starting ``BENCH``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from rlhfjob import BaseModule, Engine, Environment, Trainer


class Producer(BaseModule):
    def forward_step(self, data):
        floats = int(self.model_args["mb"] * 2**20 // 4)
        out = {
            "t": torch.ones(1, floats),
            "done_at": torch.tensor([time.time()], dtype=torch.float64),
        }
        return {**data, **out}


class Consumer(BaseModule):
    def setup(self):
        self.hops: list[float] = []

    def forward_step(self, data):
        self.hops.append(time.time() - float(data["done_at"][0]))
        return {"n": torch.tensor([data["t"].numel()])}

    def get_and_clear_metrics(self):
        hops, self.hops = self.hops, []
        return {"hop_s": sorted(hops)[len(hops) // 2]} if hops else {}


class Big(BaseModule):
    """A model of ``mb`` MB in 16 parameters; training does nothing (sync is measured)."""

    def setup(self):
        rows = int(self.model_args["mb"] * 2**20 // 4 // 16 // 1024)
        self.model = torch.nn.Sequential(
            *[torch.nn.Linear(1024, rows, bias=False) for _ in range(16)]
        )

    def forward_step(self, data):
        return {**data}

    def train_step(self, data):
        pass


def build(mode: str) -> Engine:
    if mode == "transfer":
        producer, consumer = Producer("producer"), Consumer("consumer")
        return Engine(Environment(lambda b: consumer.forward_step(producer.forward_step(b))))
    if mode == "sync":
        inference, trainer = Big("inference"), Big("trainer")
        return Engine(
            Environment(lambda b: inference.forward_step(b)),
            Trainer(lambda b: trainer.train_step(b)),
        ).set_parameter_sync(trainer, inference)
    raise ValueError(mode)


def main(argv: list[str]) -> None:
    mode = argv[0]
    if mode == "ppo":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
        import ppo_sort

        summaries = ppo_sort.main(["--quiet", *argv[1:]])
    else:
        engine = build(mode)
        engine.set_dataset([{"i": torch.tensor(i)} for i in range(4)])
        summaries = engine.learn(progress=False)
    print("BENCH " + json.dumps(summaries, default=float))


if __name__ == "__main__":
    main(sys.argv[1:])
