"""Parameter sync: rlhfjob's bucketed broadcast against one flat gloo broadcast (the limit).

``python bench/sync_bench.py MB REPLICAS BUCKETS_MB`` starts 1 + REPLICAS gloo
processes on 127.0.0.1 holding a GPT-shaped model of about MB MB (blocks of
qkv/proj/fc matrices, their biases and layer norms, d=1024) and times each
method below, best of five rounds after a warm-up round, with barriers
around each. The methods take turns within every round, so a load that comes
and goes on a shared machine touches them all alike:

- ``flat``: one preallocated tensor of the model's size, one ``dist.broadcast``;
- ``rlhfjob``: ``rlhfjob.comm.broadcast.broadcast_tensors`` on the parameters
  packed into the default 100 MB buckets (what a sync pair's workers run: the
  first sync packs, untimed here);
- ``per-parameter``: one ``dist.broadcast`` per parameter;
- ``bucket N``: the same with N MB buckets, for each N of BUCKETS_MB (the
  parameters are repacked for each, untimed).

Rank 0 prints one ``RESULT`` JSON line: seconds by method, and the bytes moved.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rlhfjob.comm.broadcast import broadcast_tensors, pack

D = 1024
DEFAULT_BUCKET_MB = 100
ROUNDS = 5


def gpt_parameters(megabytes: int, *, fill: float) -> list[torch.Tensor]:
    """Parameters shaped like a GPT's (an embedding, then blocks) until about ``megabytes``."""
    shapes: list[tuple[int, ...]] = [(8192, D)]
    block = [(3 * D, D), (3 * D,), (D, D), (D,), (4 * D, D), (4 * D,), (D, 4 * D), (D,)]
    block += [(D,)] * 4  # two layer norms
    while sum(_numel(s) for s in shapes) * 4 < megabytes * 2**20:
        shapes += block
    return [torch.full(s, fill) for s in shapes]


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _once(fn: Callable[[], object], prepare: Callable[[], object]) -> float:
    prepare()
    dist.barrier()
    start = time.perf_counter()
    fn()
    dist.barrier()
    return time.perf_counter() - start


def _rank(rank: int, world: int, port: int, megabytes: int, buckets: list[int]) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    params = gpt_parameters(megabytes, fill=float(rank == 0))
    nbytes = sum(p.numel() * 4 for p in params)
    flat = torch.full((nbytes // 4,), float(rank == 0))

    def rlhfjob(bucket_mb: int) -> tuple[Callable[[], object], Callable[[], object]]:
        return (
            lambda: broadcast_tensors(params, src=0, group=None, bucket_bytes=bucket_mb << 20),
            lambda: pack(params, bucket_bytes=bucket_mb << 20),
        )

    def unprepared() -> None:
        pass

    methods: dict[str, tuple[Callable[[], object], Callable[[], object]]] = {
        "flat": (lambda: dist.broadcast(flat, 0), unprepared),
        "rlhfjob": rlhfjob(DEFAULT_BUCKET_MB),
        "per-parameter": (lambda: [dist.broadcast(p, 0) for p in params], unprepared),
    }
    methods.update({f"bucket {mb}": rlhfjob(mb) for mb in buckets})
    seconds = {name: float("inf") for name in methods}
    for round_ in range(ROUNDS + 1):
        for name, (fn, prepare) in methods.items():
            took = _once(fn, prepare)
            if round_:  # the first round warms up connections and pages
                seconds[name] = min(seconds[name], took)
    if not all(bool((p == 1.0).all()) for p in params):
        raise RuntimeError(f"rank {rank}: parameters differ from the source after the sync")
    if rank == 0:
        result = {"seconds": seconds, "bytes": nbytes, "params": len(params)}
        print("RESULT " + json.dumps(result), flush=True)
    dist.barrier()
    dist.destroy_process_group()


def main(argv: list[str]) -> None:
    megabytes, replicas = int(argv[0]), int(argv[1])
    buckets = [int(b) for b in argv[2].split(",")] if len(argv) > 2 and argv[2] else []
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    mp.spawn(_rank, args=(replicas + 1, port, megabytes, buckets), nprocs=replicas + 1)


if __name__ == "__main__":
    main(sys.argv[1:])
