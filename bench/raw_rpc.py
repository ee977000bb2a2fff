"""Baseline: raw ``torch.distributed.rpc`` with TensorPipe's defaults, two processes.

``python bench/raw_rpc.py PORT`` starts rank 1 (the callee) itself and prints,
from rank 0, one JSON line: small-call sync latency and async calls/s, and
the round trip of 1/16/64/256 MB tensors fetched from the callee.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import torch
import torch.distributed.rpc as rpc

SIZES_MB = (1, 16, 64, 256)
_held: dict[int, torch.Tensor] = {}


def echo(x: object) -> object:
    return x


def tensor(mb: int) -> torch.Tensor:
    """A tensor made once per size and kept: what is timed is the move, not its making."""
    if mb not in _held:
        _held[mb] = torch.ones(mb * 2**18)
    return _held[mb]


def best_of(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(sync_calls: int, async_calls: int, sizes: tuple[int, ...]) -> dict[str, float]:
    small = {"x": torch.tensor([1.0])}
    out: dict[str, float] = {}
    out["sync_s"] = (
        best_of(lambda: [rpc.rpc_sync("callee", echo, args=(small,)) for _ in range(sync_calls)], 3)
        / sync_calls
    )

    def burst() -> None:
        futs = [rpc.rpc_async("callee", echo, args=(small,)) for _ in range(async_calls)]
        torch.futures.wait_all(futs)

    out["calls_per_s"] = async_calls / best_of(burst, 3)
    for mb in sizes:
        out[f"hop_s/{mb}"] = best_of(lambda mb=mb: rpc.rpc_sync("callee", tensor, args=(mb,)), 5)
    return out


def main(argv: list[str]) -> None:
    port, rank = int(argv[0]), int(argv[1]) if len(argv) > 1 else 0
    torch.set_num_threads(1)
    child = None
    if rank == 0:
        child = subprocess.Popen([sys.executable, __file__, str(port), "1"])
    options = rpc.TensorPipeRpcBackendOptions(init_method=f"tcp://127.0.0.1:{port}")
    name = "caller" if rank == 0 else "callee"
    rpc.init_rpc(name, rank=rank, world_size=2, rpc_backend_options=options)
    if rank == 0:
        sizes = tuple(int(s) for s in os.environ.get("BENCH_SIZES_MB", "1,16,64,256").split(","))
        result = measure(
            int(os.environ.get("BENCH_SYNC_CALLS", "500")),
            int(os.environ.get("BENCH_ASYNC_CALLS", "2000")),
            sizes,
        )
        print("RESULT " + json.dumps(result), flush=True)
    rpc.shutdown()
    if child is not None:
        child.wait(timeout=60)


if __name__ == "__main__":
    main(sys.argv[1:])
