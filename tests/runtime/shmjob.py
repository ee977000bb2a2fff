"""A job entrypoint for the data-plane tests: 2 MiB tensors worker to worker.

A producer returns per-sample rows of a known pattern (each sample 2 MiB, so
whole batches and trainers' row pulls both take the shared-memory path); a
consumer checks them bit for bit and adds a small output; a trainer checks the
rows it pulled. With ``models.consumer.args.kill_after`` the consumer lists
its job's segments in /dev/shm into ``models.consumer.args.seen`` and SIGKILLs
itself on that call, so the test can check that the launcher swept them.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import torch

from rlhfjob import BaseModule, Engine, Environment, Trainer

ROW = 2**19  # floats: 2 MiB a sample


def pattern(ids: torch.Tensor) -> torch.Tensor:
    return ids.to(torch.float32)[:, None] * 1000 + torch.arange(ROW, dtype=torch.float32)


class Producer(BaseModule):
    def forward_step(self, data):
        return {"id": data["id"], "big": pattern(data["id"]), "half": pattern(data["id"]).half()}


class Consumer(BaseModule):
    def setup(self):
        self.calls = 0
        self.held = []

    def forward_step(self, data):
        if not torch.equal(data["big"], pattern(data["id"])):
            raise RuntimeError("the consumer got other bytes than the producer made")
        if not torch.equal(data["half"], pattern(data["id"]).half()):
            raise RuntimeError("the float16 tensor came out wrong")
        self.held.append(data["big"])  # keeps its slot in use: the next batch needs another
        self.calls += 1
        kill_after = self.model_args.get("kill_after")
        if kill_after is not None and self.calls >= kill_after:
            prefix = f"rlhfjob_{os.environ['RLHFJOB_JOB_NAME']}_"
            names = [n for n in os.listdir("/dev/shm") if n.startswith(prefix)]
            Path(self.model_args["seen"]).write_text("\n".join(names))
            os.kill(os.getpid(), signal.SIGKILL)
        return {**data, "score": data["big"][:, :4].sum(dim=1)}


class Learner(BaseModule):
    def train_step(self, data):
        for mb in data:
            if not torch.equal(mb["big"], pattern(mb["id"])):
                raise RuntimeError("the trainer pulled other rows than the producer made")
            if not torch.equal(mb["score"], mb["big"][:, :4].sum(dim=1)):
                raise RuntimeError("the trainer pulled a wrong score")


def build() -> Engine:
    producer, consumer, learner = Producer("producer"), Consumer("consumer"), Learner("learner")
    return Engine(
        Environment(lambda b: consumer.forward_step(producer.forward_step(b))),
        Trainer(lambda b: learner.train_step(b)),
    ).set_dataset([{"id": torch.tensor(i)} for i in range(16)])


if __name__ == "__main__":
    build().learn(progress=False)
    print("shmjob done")
