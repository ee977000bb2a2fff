"""Baseline: Ray (the bench extra's pinned version) on this machine, in a process of its own.

``python bench/ray_bench.py SIZES_MB`` starts a local Ray on 127.0.0.1 (no
dashboard, no usage reporting, its files in a temporary directory), and
prints one ``RESULT`` JSON line:

- a small actor call's sync latency (``ray.get(actor.f.remote(x))``, one after
  the other) and async calls/s (N ``remote()`` calls, then one ``ray.get``);
- the object transfer of a tensor between two actors: a producer actor
  returns a tensor made once per size, and the time from its return to a
  consumer actor's method starting with it in hand (Ray resolves the
  ObjectRef argument: the plasma store, then deserialization).

Ray is shut down at the end; any process still running from its temporary
directory is killed, so nothing outlives this script.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no reporting home from a benchmark
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # no token written to ~/.ray

import ray
import torch

SYNC_CALLS = int(os.environ.get("BENCH_SYNC_CALLS", "500"))
ASYNC_CALLS = int(os.environ.get("BENCH_ASYNC_CALLS", "2000"))


@ray.remote(num_cpus=0)
class Worker:
    def __init__(self) -> None:
        torch.set_num_threads(1)
        self.made: dict[int, torch.Tensor] = {}

    def echo(self, x: object) -> object:
        return x

    def make(self, mb: int) -> tuple[torch.Tensor, float]:
        if mb not in self.made:
            self.made[mb] = torch.full((1, mb * 2**18), float(mb))
        return self.made[mb], time.time()

    def take(self, made: tuple[torch.Tensor, float]) -> float:
        hop = time.time() - made[1]
        if float(made[0][0, -1]) != float(made[0].numel() // 2**18):
            raise RuntimeError("the consumer got other data")
        return hop


def _leftovers(temp_dir: str) -> list[int]:
    """Live processes started from ``temp_dir`` (Ray's raylet, GCS, workers of this run)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if temp_dir.encode() in cmdline:
                pids.append(int(entry.name))
    return pids


def measure(sizes: list[int]) -> dict[str, float]:
    small = {"x": torch.tensor([1.0])}
    a, b = Worker.remote(), Worker.remote()
    ray.get([a.echo.remote(1), b.echo.remote(1)])
    out: dict[str, float] = {}
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(SYNC_CALLS):
            ray.get(a.echo.remote(small))
        sync_s = (time.perf_counter() - start) / SYNC_CALLS
        start = time.perf_counter()
        ray.get([a.echo.remote(small) for _ in range(ASYNC_CALLS)])
        rate = ASYNC_CALLS / (time.perf_counter() - start)
        out["sync_s"] = min(out.get("sync_s", sync_s), sync_s)
        out["calls_per_s"] = max(out.get("calls_per_s", rate), rate)
    for mb in sizes:
        hops = []
        for _ in range(5):
            made = a.make.remote(mb)
            hops.append(ray.get(b.take.remote(made)))
            del made
        out[f"hop_s/{mb}"] = min(hops[1:])
    return out


def main(argv: list[str]) -> None:
    sizes = [int(s) for s in argv[0].split(",") if s] if argv else [1, 16, 64, 256]
    temp_dir = tempfile.mkdtemp(prefix="rlhfjob-bench-ray-")
    try:
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            log_to_driver=False,
            object_store_memory=max(sizes, default=0) * 4 * 2**20 + 2**30,
            _temp_dir=temp_dir,
            configure_logging=False,
        )
        try:
            result = measure(sizes)
            result["version"] = ray.__version__  # type: ignore[assignment]
        finally:
            ray.shutdown()
        print("RESULT " + json.dumps(result), flush=True)
    finally:
        deadline = time.monotonic() + 10
        while _leftovers(temp_dir) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in _leftovers(temp_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
