"""Bucketed broadcast of parameters, sent from where they lie.

A bucket is a run of consecutive tensors of one dtype and device, up to
``bucket_bytes`` (a larger tensor has a bucket of its own). On the wire a
bucket is its tensors back to back, each starting at a multiple of
``ALIGN_BYTES``. ``pack`` moves each bucket's tensors into one buffer of
exactly that layout (re-pointing ``.data``), once: every later broadcast
then sends the buffer as it lies, one collective a bucket, no copy in or
out. On 2 CPU cores that took a 272 MB sync from 0.6 of one flat-tensor
broadcast (a collective per tensor, the rest coalesced by copying) to the
flat broadcast's rate. A bucket whose tensors do not lie so (never packed, or
re-pointed since: ``load_state_dict(assign=True)``, ``.to()``) goes through a
staging buffer of the same layout, kept for the next sync, so a packed and an
unpacked rank still agree byte for byte. The wire carries the sender's dtypes
(``wire``): a receiver whose tensors have another floating dtype (a bfloat16
policy synced from its float32 trainer) receives into staging and casts.
Every collective is issued at once (async) and waited for at the end. NCCL on
GPUs, gloo on CPUs; the caller picks the group.

The alignment keeps each packed tensor where a fresh allocation would start
(64 bytes), so kernels whose results depend on alignment (MKL's, without its
reproducibility mode) compute the same bits on packed and unpacked weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

__all__ = ["all_reduce_mean", "broadcast_tensors", "pack", "plan_buckets"]

ALIGN_BYTES = 64


def plan_buckets(
    sizes: Sequence[tuple[int, torch.dtype, torch.device]], *, bucket_bytes: int
) -> list[list[int]]:
    """Indices of ``sizes`` (bytes, dtype, device) grouped into buckets.

    A bucket holds consecutive tensors of one dtype and device up to
    ``bucket_bytes``; a tensor larger than that gets a bucket of its own.
    Every index appears once, in order; every rank that plans the same sizes
    gets the same buckets.
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


def layout(numels: Sequence[int], element_size: int) -> tuple[list[int], int]:
    """Element offsets of a bucket's tensors on the wire, and the bucket's length.

    Each offset is a multiple of ``ALIGN_BYTES`` (of one element when that is
    larger); the length ends at the last tensor, unpadded.
    """
    step = max(1, ALIGN_BYTES // element_size)
    offsets, end = [], 0
    for numel in numels:
        start = -(-end // step) * step
        offsets.append(start)
        end = start + numel
    return offsets, end


def _buckets(
    tensors: Sequence[torch.Tensor], bucket_bytes: int, wire: Sequence[torch.dtype] | None = None
) -> list[tuple[torch.dtype, list[torch.Tensor]]]:
    """Buckets of ``tensors`` with their dtype on the wire: ``wire``'s (default: their own)."""
    dtypes = [t.dtype for t in tensors] if wire is None else list(wire)
    if len(dtypes) != len(tensors):
        raise ValueError(f"{len(tensors)} tensors but {len(dtypes)} wire dtypes")
    sizes = [
        (t.numel() * _element_size(d), d, t.device) for t, d in zip(tensors, dtypes, strict=True)
    ]
    return [
        (dtypes[b[0]], [tensors[i] for i in b])
        for b in plan_buckets(sizes, bucket_bytes=bucket_bytes)
    ]


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _bucket_layout(bucket: list[torch.Tensor]) -> tuple[list[int], int]:
    return layout([t.numel() for t in bucket], bucket[0].element_size())


def _span(bucket: list[torch.Tensor], offsets: list[int], length: int) -> torch.Tensor | None:
    """A 1-D view of the memory the bucket lies in when it lies in its wire layout
    (``offsets``, ``length``), else None."""
    first = bucket[0].detach()
    base = first.data_ptr()
    storage = first.untyped_storage()
    size = first.element_size()
    for t, offset in zip(bucket, offsets, strict=True):
        if t.numel() == 0:
            continue
        if (
            not t.is_contiguous()
            or t.untyped_storage().data_ptr() != storage.data_ptr()
            or t.data_ptr() != base + offset * size
        ):
            return None
    if (first.storage_offset() + length) * size > storage.nbytes():
        return None
    return first.as_strided((length,), (1,))


@torch.no_grad()
def pack(tensors: Sequence[torch.Tensor], *, bucket_bytes: int) -> int:
    """Move each bucket of ``tensors`` into one buffer of its wire layout; returns buckets moved.

    ``tensors`` must be the tensors the caller keeps using (a module's
    parameters), since their ``.data`` is re-pointed: packing a copy or a view
    would leave the originals where they were. Values, shapes, dtypes and the
    tensors' identities (so optimizer state) are unchanged; each tensor
    becomes contiguous. Already packed buckets are left alone, so a second
    call costs only the check. A bucket's old memory is freed as it moves, so
    at most one bucket's bytes are held twice.
    """
    moved = 0
    for _, bucket in _buckets(tensors, bucket_bytes):
        offsets, length = _bucket_layout(bucket)
        if _span(bucket, offsets, length) is None:
            _pack_bucket(bucket, offsets, length)
            moved += 1
    return moved


def _pack_bucket(bucket: list[torch.Tensor], offsets: list[int], length: int) -> torch.Tensor:
    """Move ``bucket`` into a new buffer of its wire layout; returns the buffer."""
    flat = torch.zeros(length, dtype=bucket[0].dtype, device=bucket[0].device)
    for t, offset in zip(bucket, offsets, strict=True):
        view = flat[offset : offset + t.numel()].view(t.shape)
        view.copy_(t.data)
        t.data = view
    return flat


# Staging buffers of unpacked buckets, by (dtype, device, length, position), kept for the
# next sync of the same layout (a fresh one page-faults on every write).
_staging: dict[tuple[torch.dtype, torch.device, int, int], torch.Tensor] = {}


def _stage(position: int, dtype: torch.dtype, device: torch.device, length: int) -> torch.Tensor:
    key = (dtype, device, length, position)
    if key not in _staging:
        _staging[key] = torch.zeros(length, dtype=dtype, device=device)
    return _staging[key]


@torch.no_grad()
def broadcast_tensors(
    tensors: Sequence[torch.Tensor],
    *,
    src: int,
    group: dist.ProcessGroup | None,
    bucket_bytes: int,
    packing: bool = False,
    wire: Sequence[torch.dtype] | None = None,
) -> int:
    """Broadcast ``tensors`` from global rank ``src`` to the group, in place; returns bytes.

    Every rank must pass tensors of the same sizes and order, and the same
    ``wire``: the sender's dtypes (default: each rank's own, which must then
    agree). A receiver's tensor of another dtype is cast from the wire's.
    Whether a rank's tensors are packed changes only its copies, not what is
    sent. With ``packing``, a bucket not yet packed is packed (see
    :func:`pack`, whose caveat applies) and sent from its new buffer, in the
    same pass.
    """
    sending = dist.get_rank() == src
    works: list[tuple[Any, list[int] | None, torch.Tensor, list[torch.Tensor]]] = []
    moved = 0
    for position, (dtype, bucket) in enumerate(_buckets(tensors, bucket_bytes, wire)):
        size = _element_size(dtype)
        moved += sum(t.numel() * size for t in bucket)
        offsets, length = layout([t.numel() for t in bucket], size)
        same = all(t.dtype == dtype for t in bucket)  # else received into staging, cast
        span = _span(bucket, offsets, length) if same else None
        if span is None and packing and same:
            span = _pack_bucket(bucket, offsets, length)
        if span is not None:
            works.append(
                (dist.broadcast(span, src=src, group=group, async_op=True), None, span, bucket)
            )
            continue
        staged = _stage(position, dtype, bucket[0].device, length)
        if sending:
            for t, offset in zip(bucket, offsets, strict=True):
                staged[offset : offset + t.numel()].view(t.shape).copy_(t.data)
        work = dist.broadcast(staged, src=src, group=group, async_op=True)
        works.append((work, offsets, staged, bucket))
    for work, unstage, staged, bucket in works:
        work.wait()
        if unstage is not None and not sending:
            for t, offset in zip(bucket, unstage, strict=True):
                t.data.copy_(staged[offset : offset + t.numel()].view(t.shape))
    return moved


@torch.no_grad()
def all_reduce_mean(
    tensors: Sequence[torch.Tensor], *, group: dist.ProcessGroup | None, bucket_bytes: int
) -> None:
    """Average ``tensors`` (gradients) across the group in place, bucket by bucket."""
    size = dist.get_world_size(group)
    for _, bucket in _buckets(tensors, bucket_bytes):
        flat = _flatten_dense_tensors(bucket)
        dist.all_reduce(flat, group=group)
        flat.div_(size)
        for t, reduced in zip(bucket, _unflatten_dense_tensors(flat, bucket), strict=True):
            t.copy_(reduced)
