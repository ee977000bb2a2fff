"""Entrypoint of the benchmark jobs that bench/run.py starts with ``rlhfjob run``.

Modes (the first argument):

``calls SYNC ASYNC``: the driver makes SYNC small calls one after the other
(each waits for its result) and then ASYNC calls at once, through the RPC
executor to one worker.
``transfer``: a producer worker returns one tensor per episode, of the size
the prompt names (MB); a consumer worker on the same host takes it as input
and reports the hop: from the producer's return to the consumer's call
starting with the tensor in hand.
``sync``: a trainer and its inference twin(s), each ``mb`` MB in 16
parameters; parameter sync after every (empty) training step.
``pipeline MS [stages]``: four models whose steps sleep MS ms, chained in the
env flow; ``stages`` makes every call wait for the one before it (no overlap
between batches: what a stage-by-stage run does with one replica per model).
``memory``: a producer's samples carry 256 KB each; a trainer pulls them;
the driver reports its peak RSS.
``ppo ...``, ``example NAME ...``: the PPO example's engine (examples/ppo_sort.py), or
example NAME's, in-process when run with plain python, distributed under ``rlhfjob run``.
``staleness``: the sleep-bound flow of the asynchronous-RL benchmark: a policy whose
batches sleep ``ms`` ms (standing in for generation kernels) and its trainer, whose
steps sleep ``ms`` ms, synced every episode.

Each job prints one JSON line starting ``BENCH``.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch

from rlhfjob import BaseModule, Engine, Environment, Trainer, context
from rlhfjob.executor.rpc import RpcExecutor
from rlhfjob_operator.spec import JobConfig


class Echo(BaseModule):
    def forward_step(self, data):
        return data


class Producer(BaseModule):
    def setup(self):
        self.made: dict[int, torch.Tensor] = {}

    def forward_step(self, data):
        mb = int(data["mb"][0])
        if mb not in self.made:  # made once per size: the hop is timed, not the making
            self.made[mb] = torch.full((1, mb * 2**18), float(mb))
        return {"t": self.made[mb], "done_at": torch.tensor([time.time()], dtype=torch.float64)}


class Consumer(BaseModule):
    def setup(self):
        self.hops: list[tuple[int, float]] = []

    def forward_step(self, data):
        hop = time.time() - float(data["done_at"][0])
        t = data["t"]
        mb = t.numel() // 2**18
        if float(t[0, -1]) != float(mb):  # read after the clock stopped: it must be the data
            raise RuntimeError(f"consumer got wrong data for {mb} MB")
        self.hops.append((mb, hop))
        return {"n": torch.tensor([t.numel()])}

    def get_and_clear_metrics(self):
        hops, self.hops = self.hops, []
        return {f"hop_s/{mb}": hop for mb, hop in hops}


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


class Sleeper(BaseModule):
    def forward_step(self, data):
        time.sleep(self.model_args["ms"] / 1000)
        return {**data}


class SleepingTrainer(BaseModule):
    """A policy's trainer: a step sleeps ``ms`` ms, then nudges the one weight it syncs."""

    def setup(self):
        self.model = torch.nn.Linear(1, 1, bias=False)

    def forward_step(self, data):
        time.sleep(self.model_args["ms"] / 1000)
        return {**data}

    def train_step(self, data):
        time.sleep(self.model_args["ms"] / 1000)
        with torch.no_grad():
            self.model.weight.add_(0.01)


class Blob(BaseModule):
    def forward_step(self, data):
        return {**data, "blob": torch.ones(len(data["i"]), 65536)}  # 256 KB a sample


class Sink(BaseModule):
    def train_step(self, data):
        pass


class StageByStage(RpcExecutor):
    """Every call waits for the one before it to finish: no two calls overlap."""

    def call(self, node: Any, inputs: Any, *, iteration: int | None) -> Any:
        ref = super().call(node, inputs, iteration=iteration)
        self._done(ref)
        return ref


def _job_config() -> JobConfig:
    return JobConfig(runtime=context.job.spec.runtime, models=context.job.spec.models)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (same host), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def calls(sync_n: int, async_n: int) -> dict[str, float]:
    echo = Echo("echo")
    node = Environment(lambda b: echo.forward_step(b)).graph.nodes[0]
    ex = RpcExecutor(_job_config(), context.peers)
    ex.setup([echo])
    small = {"x": torch.tensor([1.0])}
    out: dict[str, float] = {}
    worker_pid = next(p.pid for p in context.peers if p.rank == 1)
    try:
        for _ in range(3):  # warm up, then take the best of three rounds
            start = time.perf_counter()
            for _ in range(sync_n):
                if ex.fetch(ex.call(node, [small], iteration=None))["x"].item() != 1.0:
                    raise RuntimeError("echo returned something else")
            ex.release()
            sync_s = (time.perf_counter() - start) / sync_n
            cpu = _cpu_seconds(worker_pid), time.process_time()
            start = time.perf_counter()
            for _ in range(async_n):
                ex.call(node, [small], iteration=None)
            ex.wait()
            rate = async_n / (time.perf_counter() - start)
            out["worker_cpu_per_call_s"] = (_cpu_seconds(worker_pid) - cpu[0]) / async_n
            out["driver_cpu_per_call_s"] = (time.process_time() - cpu[1]) / async_n
            ex.release()
            out["sync_s"] = min(out.get("sync_s", sync_s), sync_s)
            out["calls_per_s"] = max(out.get("calls_per_s", rate), rate)
    finally:
        ex.shutdown()
    return out


def _synced(inference: BaseModule, trainer: BaseModule, *, prompts: int) -> Engine:
    """An env flow of ``inference``, a trainer flow of ``trainer``, synced every episode."""
    return (
        Engine(
            Environment(lambda b: inference.forward_step(b)),
            Trainer(lambda b: trainer.train_step(b)),
        )
        .set_parameter_sync(trainer, inference)
        .set_dataset([{"i": torch.tensor(i)} for i in range(prompts)])
    )


def build(mode: str, args: list[str]) -> Engine:
    if mode == "transfer":
        producer, consumer = Producer("producer"), Consumer("consumer")
        engine = Engine(Environment(lambda b: consumer.forward_step(producer.forward_step(b))))
        sizes = [int(s) for s in args[0].split(",")]
        return engine.set_dataset([{"mb": torch.tensor(mb)} for mb in sizes])
    if mode == "sync":
        return _synced(Big("inference"), Big("trainer"), prompts=4)
    if mode == "pipeline":
        m0, m1, m2, m3 = (Sleeper(f"m{i}") for i in range(4))

        def chain(b: Any) -> Any:
            return m3.forward_step(m2.forward_step(m1.forward_step(m0.forward_step(b))))

        stages = len(args) > 1 and args[1] == "stages"
        executor = StageByStage(_job_config(), context.peers) if stages else None
        engine = Engine(Environment(chain), executor=executor)
        return engine.set_dataset([{"i": torch.tensor(i)} for i in range(64)])
    if mode == "staleness":
        return _synced(SleepingTrainer("policy"), SleepingTrainer("trainer"), prompts=64)
    if mode == "memory":
        blob, sink = Blob("blob"), Sink("sink")
        return Engine(
            Environment(lambda b: blob.forward_step(b)), Trainer(lambda b: sink.train_step(b))
        ).set_dataset([{"i": torch.tensor(i)} for i in range(64)])
    raise ValueError(f"unknown mode {mode!r}")


def main(argv: list[str]) -> None:
    mode = argv[0]
    result: Any
    if mode in ("ppo", "example"):
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
        name, rest = ("ppo_sort", argv[1:]) if mode == "ppo" else (argv[1], argv[2:])
        result = importlib.import_module(name).main(["--quiet", *rest])
    elif mode == "calls":
        result = calls(int(argv[1]), int(argv[2]))
    else:
        result = build(mode, argv[1:]).learn(progress=False)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("BENCH " + json.dumps({"result": result, "driver_peak_rss_mb": peak_mb}, default=float))


if __name__ == "__main__":
    main(sys.argv[1:])
