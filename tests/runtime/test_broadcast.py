"""Bucketed broadcast: the plan, and real gloo processes ending on the source's exact bytes."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from spawned import spawned_exit_codes

from rlhfjob.comm.broadcast import broadcast_tensors, layout, pack, plan_buckets
from rlhfjob.executor.rpc import check_sync_specs

F32, CPU = torch.float32, torch.device("cpu")


def test_plan_fills_buckets_in_order_and_splits_on_dtype():
    sizes = [(100, F32, CPU), (200, F32, CPU), (5000, F32, CPU), (300, F32, CPU)]
    sizes += [(50, torch.float16, CPU), (60, torch.float16, CPU)]
    assert plan_buckets(sizes, bucket_bytes=1000) == [[0, 1], [2], [3], [4, 5]]
    assert plan_buckets(sizes, bucket_bytes=10_000) == [[0, 1, 2, 3], [4, 5]]


def test_layout_starts_every_tensor_on_64_bytes():
    assert layout([3, 16, 1], 4) == ([0, 16, 32], 33)
    assert layout([5, 5], 2) == ([0, 32], 37)
    assert layout([2, 2], 8) == ([0, 8], 10)


def test_pack_keeps_values_and_identity_and_aligns_each_tensor():
    model = torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.LayerNorm(3), torch.nn.Linear(3, 2))
    params = list(model.parameters())
    before = [p.detach().clone() for p in params]
    optimizer = torch.optim.Adam(model.parameters())
    assert pack(params, bucket_bytes=1 << 20) == 1
    assert pack(params, bucket_bytes=1 << 20) == 0  # already packed: only the check
    base = params[0].data_ptr()
    for p, old, offset in zip(
        params, before, layout([p.numel() for p in params], 4)[0], strict=True
    ):
        assert torch.equal(p, old) and p.is_contiguous()
        assert p.data_ptr() == base + 4 * offset and p.data_ptr() % 64 == 0
    # The optimizer still holds the same Parameters and updates the packed memory.
    model(torch.ones(1, 5)).sum().backward()
    optimizer.step()
    assert params[0].data_ptr() == base and not torch.equal(params[0], before[0])
    # Re-pointed since (load_state_dict(assign=True), .to()): packed again on the next call.
    params[1].data = params[1].data.clone()
    assert pack(params, bucket_bytes=1 << 20) == 1


def _params(rank: int, step: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * step + (0 if rank == 0 else 7 + rank))
    big = torch.randn(512, 1024, generator=g)  # 2 MiB: a bucket of its own
    return [  # in 4 KiB buckets: [0, 1], [2], [3], [4, 5], [6, 7]
        torch.randn(3, generator=g),
        torch.randn(5, generator=g),
        big,
        torch.randn(64, 32, generator=g).t(),  # not contiguous, a bucket of its own
        torch.randn(7, generator=g),
        torch.randn(9, generator=g),
        torch.randn(5, generator=g).half(),
        torch.randn(6, generator=g).half(),
    ]


def _rank(rank: int, world: int, port: int, packed: list[bool]) -> None:
    """One process; a wrong byte fails its exit code (and prints the traceback)."""
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    params = _params(rank, 0)
    if packed[rank]:
        assert pack(params, bucket_bytes=1 << 12) == 4  # all but the big one
    for step in range(3):  # the later syncs reuse the staging buffers
        fresh = _params(rank, step)
        for p, new in zip(params, fresh, strict=True):
            p.copy_(new)
        if step == 2 and packed[rank]:
            params[0].data = params[0].data.clone()  # unpacked again: staged, still right
        moved = broadcast_tensors(params, src=0, group=None, bucket_bytes=1 << 12)
        assert moved == sum(p.numel() * p.element_size() for p in params)
        for p, want in zip(params, _params(0, step), strict=True):
            assert torch.equal(p, want), (rank, step)
    dist.destroy_process_group()


# Packed and unpacked ranks send and take the same bytes, whichever side each is on.
@pytest.mark.parametrize(
    "packed", [[False, False], [True, True], [True, False], [False, True, True]], ids=str
)
def test_every_replica_ends_on_the_sources_bytes(packed):
    world = len(packed)
    assert spawned_exit_codes(_rank, world, packed) == [0] * world


def _cast_rank(rank: int, world: int, port: int) -> None:
    """Rank 0 sends float32; rank 1 holds bfloat16 copies and casts what it receives."""
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    sent = [t for t in _params(0, 0) if t.dtype == F32]
    wire = [t.dtype for t in sent]
    params = sent if rank == 0 else [torch.zeros(t.shape, dtype=torch.bfloat16) for t in sent]
    for _ in range(2):  # the second reuses the staging buffers
        moved = broadcast_tensors(params, src=0, group=None, bucket_bytes=1 << 12, wire=wire)
        assert moved == sum(t.numel() * 4 for t in sent)  # float32 on the wire
        for p, want in zip(params, _params(0, 0), strict=False):
            assert torch.equal(p, want.to(p.dtype)), rank
    dist.destroy_process_group()


def test_a_bfloat16_replica_receives_float32_weights_cast():
    assert spawned_exit_codes(_cast_rank, 2) == [0, 0]


def test_sync_pairs_may_differ_in_floating_dtype_only():
    a = [("w", (2, 3), "torch.float32"), ("b", (3,), "torch.float32")]
    check_sync_specs("trainer", "policy", a, [("w", (2, 3), "torch.bfloat16"), a[1]])
    for b in (
        [("w", (3, 2), "torch.float32"), a[1]],  # a shape
        [("v", (2, 3), "torch.float32"), a[1]],  # a name
        [a[0]],  # a parameter missing
        [("w", (2, 3), "torch.int64"), a[1]],  # no cast to integers
    ):
        with pytest.raises(ValueError, match="trainer -> policy: the models differ"):
            check_sync_specs("trainer", "policy", a, b)
