"""Bucketed broadcast of parameters: large tensors in place, small ones coalesced.

A tensor of at least ``DIRECT_BYTES`` (or of a whole bucket) is broadcast in
place: copying it into a bucket and out again costs more than its one
collective (on 2 CPU cores the copies took a 256 MB sync from 1.8 GB/s, one
flat broadcast, to 0.5 GB/s). Smaller consecutive tensors of one dtype and
device share buckets of up to ``bucket_bytes``, flattened into staging
buffers that are kept for the next sync (a fresh one page-faults on every
write). Every collective is issued at once (async) and waited for at the end,
so the copies overlap the transfers and no collective waits on Python. NCCL
on GPUs, gloo on CPUs; the caller picks the group.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

__all__ = ["all_reduce_mean", "broadcast_tensors", "plan_buckets"]


# A tensor this large goes alone: its collective's fixed cost is small beside its bytes.
DIRECT_BYTES = 1 << 20


def plan_buckets(
    sizes: Sequence[tuple[int, torch.dtype, torch.device]],
    *,
    bucket_bytes: int,
    direct_bytes: int | None = None,
) -> list[list[int]]:
    """Indices of ``sizes`` (bytes, dtype, device) grouped into buckets.

    A bucket holds consecutive tensors of one dtype and device up to
    ``bucket_bytes``; a tensor larger than that gets a bucket of its own.
    With ``direct_bytes``, a tensor of at least that (or of a whole bucket)
    gets its own bucket where it stands, and the small tensors between such
    ones keep filling one bucket: a model's biases and norms, which sit
    between its matrices, then make a few collectives, not one each. Every
    index appears once; every rank that plans the same sizes gets the same
    order.
    """
    buckets: list[list[int]] = []
    current: list[int] = []
    used = 0
    key: tuple[torch.dtype, torch.device] | None = None
    for index, (nbytes, dtype, device) in enumerate(sizes):
        if direct_bytes is not None and nbytes >= min(direct_bytes, bucket_bytes):
            buckets.append([index])
            continue
        if current and ((dtype, device) != key or used + nbytes > bucket_bytes):
            buckets.append(current)
            current, used = [], 0
        current.append(index)
        used += nbytes
        key = (dtype, device)
    if current:
        buckets.append(current)
    return buckets


def _buckets(
    tensors: Sequence[torch.Tensor], bucket_bytes: int, direct_bytes: int | None = None
) -> list[list[torch.Tensor]]:
    sizes = [(t.numel() * t.element_size(), t.dtype, t.device) for t in tensors]
    plan = plan_buckets(sizes, bucket_bytes=bucket_bytes, direct_bytes=direct_bytes)
    return [[tensors[i] for i in b] for b in plan]


# Staging buffers of coalesced buckets, by (dtype, device, elements, position), kept for the
# next sync of the same layout.
_staging: dict[tuple[torch.dtype, torch.device, int, int], torch.Tensor] = {}


def _stage(position: int, bucket: list[torch.Tensor]) -> torch.Tensor:
    numel = sum(t.numel() for t in bucket)
    key = (bucket[0].dtype, bucket[0].device, numel, position)
    if key not in _staging:
        _staging[key] = torch.empty(numel, dtype=bucket[0].dtype, device=bucket[0].device)
    return _staging[key]


@torch.no_grad()
def broadcast_tensors(
    tensors: Sequence[torch.Tensor], *, src: int, group: dist.ProcessGroup | None, bucket_bytes: int
) -> int:
    """Broadcast ``tensors`` from global rank ``src`` to the group, in place; returns bytes.

    Tensors that are not contiguous are always coalesced (a collective needs dense memory).
    """
    sending = dist.get_rank() == src
    works: list[tuple[Any, torch.Tensor | None, list[torch.Tensor]]] = []
    moved = 0
    for position, bucket in enumerate(_buckets(tensors, bucket_bytes, DIRECT_BYTES)):
        moved += sum(t.numel() * t.element_size() for t in bucket)
        if len(bucket) == 1 and bucket[0].is_contiguous():
            work = dist.broadcast(bucket[0].data, src=src, group=group, async_op=True)
            works.append((work, None, bucket))
            continue
        flat = _stage(position, bucket)
        if sending:
            offset = 0
            for t in bucket:
                flat[offset : offset + t.numel()].view_as(t).copy_(t.data)
                offset += t.numel()
        works.append((dist.broadcast(flat, src=src, group=group, async_op=True), flat, bucket))
    for work, staged, bucket in works:
        work.wait()
        if staged is not None and not sending:
            offset = 0
            for t in bucket:
                t.data.copy_(staged[offset : offset + t.numel()].view_as(t))
                offset += t.numel()
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
