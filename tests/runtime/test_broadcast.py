"""Bucketed broadcast: the plan, and real gloo processes ending on the source's exact bytes."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rlhfjob.comm.broadcast import DIRECT_BYTES, broadcast_tensors, plan_buckets

F32, CPU = torch.float32, torch.device("cpu")


def test_plan_sends_large_tensors_alone_and_coalesces_small_ones():
    sizes = [(100, F32, CPU), (200, F32, CPU), (DIRECT_BYTES, F32, CPU), (300, F32, CPU)]
    sizes += [(50, torch.float16, CPU), (60, torch.float16, CPU)]
    # The small ones around a large one share a bucket; a change of dtype starts another.
    assert plan_buckets(sizes, bucket_bytes=10_000, direct_bytes=DIRECT_BYTES) == [
        [2],
        [0, 1, 3],
        [4, 5],
    ]
    # Without direct_bytes (gradients' all-reduce) only the bucket size splits.
    assert plan_buckets(sizes[:4], bucket_bytes=DIRECT_BYTES * 2) == [[0, 1, 2, 3]]
    # A bucket smaller than DIRECT_BYTES: anything of a whole bucket goes alone.
    assert plan_buckets(sizes[:4], bucket_bytes=250, direct_bytes=DIRECT_BYTES) == [
        [0],
        [2],
        [3],
        [1],
    ]


def _params(rank: int, step: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * step + (0 if rank == 0 else 7 + rank))
    big = torch.randn(512, 1024, generator=g)  # 2 MiB: broadcast in place
    return [
        torch.randn(3, generator=g),
        big,
        torch.randn(64, 32, generator=g).t(),  # not contiguous: coalesced
        torch.randn(5, generator=g).half(),
        torch.randn(7, generator=g),
    ]


def _rank(rank: int, world: int, port: int) -> None:
    """One process; a wrong byte fails its exit code (and prints the traceback)."""
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    params = _params(rank, 0)
    for step in range(2):  # the second sync reuses the staging buffers
        fresh = _params(rank, step)
        for p, new in zip(params, fresh, strict=True):
            p.copy_(new)
        moved = broadcast_tensors(params, src=0, group=None, bucket_bytes=1 << 12)
        assert moved == sum(p.numel() * p.element_size() for p in params)
        for p, want in zip(params, _params(0, step), strict=True):
            assert torch.equal(p, want), (rank, step)
    dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 3])
def test_every_replica_ends_on_the_sources_bytes(world):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # No multiprocessing queue: its semaphore would live in /dev/shm.
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_rank, args=(r, world, port)) for r in range(world)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join(timeout=120)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    assert [p.exitcode for p in procs] == [0] * world
