"""Bucketed broadcast of parameters: flatten, broadcast, unflatten in place.

One collective per bucket of ``bucket_bytes`` (same dtype and device), never
one per parameter: per-call latency dominates small tensors, and a bucket
keeps the copy bounded in memory. NCCL on GPUs, gloo on CPUs; the caller
picks the group.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

__all__ = ["all_reduce_mean", "broadcast_tensors", "plan_buckets"]


def plan_buckets(
    sizes: Sequence[tuple[int, torch.dtype, torch.device]], *, bucket_bytes: int
) -> list[list[int]]:
    """Indices of ``sizes`` (bytes, dtype, device) grouped into buckets, in order.

    A bucket holds consecutive tensors of one dtype and device up to
    ``bucket_bytes``; a tensor larger than that gets a bucket of its own.
    """
    buckets: list[list[int]] = []
    current: list[int] = []
    used = 0
    key: tuple[torch.dtype, torch.device] | None = None
    for index, (nbytes, dtype, device) in enumerate(sizes):
        if current and ((dtype, device) != key or used + nbytes > bucket_bytes):
            buckets.append(current)
            current, used = [], 0
        current.append(index)
        used += nbytes
        key = (dtype, device)
    if current:
        buckets.append(current)
    return buckets


def _buckets(tensors: Sequence[torch.Tensor], bucket_bytes: int) -> list[list[torch.Tensor]]:
    sizes = [(t.numel() * t.element_size(), t.dtype, t.device) for t in tensors]
    return [[tensors[i] for i in b] for b in plan_buckets(sizes, bucket_bytes=bucket_bytes)]


@torch.no_grad()
def broadcast_tensors(
    tensors: Sequence[torch.Tensor], *, src: int, group: dist.ProcessGroup | None, bucket_bytes: int
) -> int:
    """Broadcast ``tensors`` from global rank ``src`` to the group, in place; returns bytes."""
    moved = 0
    for bucket in _buckets(tensors, bucket_bytes):
        if len(bucket) == 1:
            dist.broadcast(bucket[0].data, src=src, group=group)
        else:
            flat = _flatten_dense_tensors([t.data for t in bucket])
            dist.broadcast(flat, src=src, group=group)
            if dist.get_rank() != src:
                for t, synced in zip(bucket, _unflatten_dense_tensors(flat, bucket), strict=True):
                    t.data.copy_(synced)
        moved += sum(t.numel() * t.element_size() for t in bucket)
    return moved


@torch.no_grad()
def all_reduce_mean(
    tensors: Sequence[torch.Tensor], *, group: dist.ProcessGroup | None, bucket_bytes: int
) -> None:
    """Average ``tensors`` (gradients) across the group in place, bucket by bucket."""
    size = dist.get_world_size(group)
    for bucket in _buckets(tensors, bucket_bytes):
        flat = _flatten_dense_tensors(bucket)
        dist.all_reduce(flat, group=group)
        flat.div_(size)
        for t, reduced in zip(bucket, _unflatten_dense_tensors(flat, bucket), strict=True):
            t.copy_(reduced)
