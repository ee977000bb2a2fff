"""Same-host fast path for large tensors: the consumer's pooled shared memory, producer-filled.

A consumer that fetches a value from a producer with the same /dev/shm
(``domain()``) asks for its layout first; every tensor of at least
``THRESHOLD`` bytes gets a slot from the consumer's ``Pool``, the producer
copies the tensor straight into it (``Writer``), and the consumer's tensor is
a view of the slot: one copy in all, no pickling, no socket.

Why the consumer owns the memory: it alone knows when its tensors die. A slot
goes back to its pool when the last tensor viewing it is freed, and is reused
for the next value of a fitting size. Why a pool at all: writing a fresh
/dev/shm segment costs a page fault per 4 KiB page (about 0.7 GB/s on a 2-core
VM, against about 5 GB/s into memory touched before).

Segments are named ``<prefix><rank>_<pid>_<n>`` with the job's prefix
(``rlhfjob_operator.contract.shm_prefix``): the pool unlinks them when it trims
and at exit, and the local launcher sweeps the prefix after the gang stops,
so a SIGKILLed worker leaves nothing in /dev/shm.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import math
import mmap
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

__all__ = ["THRESHOLD", "Big", "Pool", "Writer", "domain", "layout", "rebuild"]

SHM_ROOT = Path("/dev/shm")
# Below this a tensor rides in the pickle: a slot costs a round trip more than it saves.
THRESHOLD = 1 << 20
_MIN_SLOT = 1 << 20
# Free slots kept for reuse; freeing past this unlinks the segment.
_KEEP_FREE = 1 << 30
# Producer-side mappings of consumers' segments kept open (each costs a page-table fill).
_MAPPINGS = 256
# Copies at least this large are split over two threads: one core's copy does not
# saturate memory bandwidth (about 5 vs 7 GB/s at 64 MB on a 2-core VM).
_SPLIT = 8 << 20
_copiers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="rlhfjob-shm-copy")


def domain() -> str:
    """Who shares this process's /dev/shm: equal strings mean the same tmpfs, the same kernel.

    The kernel's boot id tells hosts (and VMs) apart; the device and inode of
    /dev/shm tell apart pods of one node, which each mount their own. "" when
    /dev/shm is missing or not writable: such a process never takes this path.
    """
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        st = os.stat(SHM_ROOT)
    except OSError:
        return ""
    if not os.access(SHM_ROOT, os.W_OK):
        return ""
    return f"{boot}:{st.st_dev}:{st.st_ino}"


@dataclasses.dataclass(frozen=True)
class Big:
    """The place of a large tensor in a value's layout: its slot index, shape and dtype."""

    index: int
    shape: tuple[int, ...]
    dtype: torch.dtype
    requires_grad: bool


def _eligible(t: Any) -> bool:
    return (
        isinstance(t, torch.Tensor)
        and t.device.type == "cpu"
        and t.layout == torch.strided
        and not t.is_quantized
    )


def layout(
    value: Any, indices: Sequence[int] | None, *, threshold: int = THRESHOLD
) -> tuple[Any, list[torch.Tensor], list[Big]]:
    """``value`` (rows ``indices`` of it) with large tensors replaced by ``Big`` markers.

    Returns (skeleton, sources, markers): ``sources[i]`` is what goes into slot
    ``i`` (the whole tensor, before row selection). Only a bare tensor or the
    top level of a dict is looked into; anything else passes as it is. Rows
    are selected as the RPC path does: ``index_select`` on tensors, a list of
    the entries of other sequences.
    """
    sources: list[torch.Tensor] = []
    markers: list[Big] = []

    def one(v: Any, rows: Sequence[int] | None) -> Any:
        if _eligible(v):
            shape = tuple(v.shape) if rows is None else (len(rows), *v.shape[1:])
            if math.prod(shape) * v.element_size() >= threshold:
                sources.append(v)
                markers.append(Big(len(markers), shape, v.dtype, v.requires_grad))
                return markers[-1]
            if rows is not None:
                return v.index_select(0, torch.tensor(rows, dtype=torch.long))
            return v
        return v if rows is None else [v[i] for i in rows]

    if isinstance(value, dict):
        return {k: one(v, indices) for k, v in value.items()}, sources, markers
    if isinstance(value, torch.Tensor):
        return one(value, None), sources, markers  # as the RPC path: rows only of dicts
    return value, sources, markers


def rebuild(skeleton: Any, tensors: Sequence[torch.Tensor]) -> Any:
    """The value again, each ``Big`` marker of ``skeleton`` replaced by its tensor."""

    def one(v: Any) -> Any:
        if isinstance(v, Big):
            t = tensors[v.index]
            return t.requires_grad_() if v.requires_grad and t.is_floating_point() else t
        return v

    if isinstance(skeleton, dict):
        return {k: one(v) for k, v in skeleton.items()}
    return one(skeleton)


def _slot_size(nbytes: int) -> int:
    """Slots come in powers of two from 1 MiB: a value a little larger than the last reuses
    nothing otherwise (sequence lengths vary from batch to batch)."""
    size = _MIN_SLOT
    while size < nbytes:
        size *= 2
    return size


@dataclasses.dataclass(eq=False)
class _Slot:
    name: str
    size: int
    mm: mmap.mmap


class Pool:
    """The consumer's shared-memory slots: ``alloc`` one, ``tensor`` views it.

    Thread-safe; a slot's release runs when the last tensor viewing it is
    garbage collected, on whatever thread that happens.
    """

    def __init__(self, prefix: str, *, keep_free: int = _KEEP_FREE) -> None:
        self.prefix = prefix
        self.keep_free = keep_free
        self._lock = threading.RLock()  # a release may run from GC inside alloc
        self._count = 0
        self._free: dict[int, list[_Slot]] = {}
        self._free_bytes = 0
        self._live: dict[str, _Slot] = {}
        self._dropped: list[str] = []
        self._told: dict[str, int] = {}
        atexit.register(self.close)

    def alloc(self, nbytes: int) -> _Slot:
        """A slot of at least ``nbytes``; OSError when /dev/shm has no room for it."""
        size = _slot_size(nbytes)
        with self._lock:
            free = self._free.get(size)
            if free:
                slot = free.pop()
                self._free_bytes -= size
                return slot
            name = f"{self.prefix}{os.getpid()}_{self._count}"
            self._count += 1
        fd = os.open(SHM_ROOT / name, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            # Reserve the pages now: a full /dev/shm (64 MiB in many containers) then fails
            # here with ENOSPC, where a sparse segment would SIGBUS the writer later.
            os.posix_fallocate(fd, 0, size)
            mm = mmap.mmap(fd, size)
        except OSError:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(SHM_ROOT / name)
            raise
        os.close(fd)
        slot = _Slot(name, size, mm)
        with self._lock:
            self._live[name] = slot
        return slot

    def tensor(self, slot: _Slot, marker: Big) -> torch.Tensor:
        """A tensor of ``marker``'s shape and dtype over ``slot``; the slot is released when
        the tensor and every view of it are gone."""
        numel = math.prod(marker.shape)
        view = memoryview(slot.mm)[: numel * marker.dtype.itemsize]
        # frombuffer keeps ``view`` alive as long as the tensor's storage.
        weakref.finalize(view, self.release, slot)
        return torch.frombuffer(view, dtype=marker.dtype, count=numel).view(marker.shape)

    def release(self, slot: _Slot) -> None:
        with self._lock:
            if slot.name not in self._live:
                return  # closed
            if self._free_bytes + slot.size <= self.keep_free:
                self._free.setdefault(slot.size, []).append(slot)
                self._free_bytes += slot.size
                return
            del self._live[slot.name]
            self._dropped.append(slot.name)
        _unlink(slot)

    def dropped_for(self, peer: str) -> list[str]:
        """Segments unlinked since ``peer`` was last told: it must close its mappings."""
        with self._lock:
            start = self._told.get(peer, 0)
            self._told[peer] = len(self._dropped)
            return self._dropped[start:]

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._live)

    def close(self) -> None:
        """Unlink every segment; tensors still viewing one keep their memory until freed."""
        with self._lock:
            slots, self._live, self._free, self._free_bytes = list(self._live.values()), {}, {}, 0
        for slot in slots:
            _unlink(slot)


def _unlink(slot: _Slot) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(SHM_ROOT / slot.name)
    # A tensor may still view it: then its memory goes when the tensor does.
    with contextlib.suppress(BufferError):
        slot.mm.close()


class Writer:
    """The producer's side: copies tensors into consumers' slots, by segment name.

    Mappings stay open for reuse (bounded, least recently used closed first);
    ``forget`` closes those of segments their consumer unlinked.
    """

    def __init__(self, *, mappings: int = _MAPPINGS) -> None:
        self._lock = threading.Lock()
        self._maps: OrderedDict[str, mmap.mmap] = OrderedDict()
        self._limit = mappings

    def forget(self, names: Sequence[str]) -> None:
        with self._lock:
            closing = [self._maps.pop(n) for n in names if n in self._maps]
        for mm in closing:
            with contextlib.suppress(BufferError):
                mm.close()

    def _map(self, name: str, size: int) -> mmap.mmap:
        with self._lock:
            mm = self._maps.get(name)
            if mm is not None:
                self._maps.move_to_end(name)
                return mm
        if "/" in name or not name:
            raise ValueError(f"not a shared-memory segment name: {name!r}")
        fd = os.open(SHM_ROOT / name, os.O_RDWR)
        try:
            mm = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        with self._lock:
            self._maps[name] = mm
            while len(self._maps) > self._limit:
                _, old = self._maps.popitem(last=False)
                with contextlib.suppress(BufferError):
                    old.close()
        return mm

    def write(
        self,
        source: torch.Tensor,
        marker: Big,
        indices: Sequence[int] | None,
        target: tuple[str, int],
    ) -> None:
        """Copy ``source`` (rows ``indices``) into segment ``target`` = (name, size)."""
        name, size = target
        numel = math.prod(marker.shape)
        if numel * marker.dtype.itemsize > size:
            raise ValueError(f"slot {name} of {size} bytes is too small for {marker}")
        mm = self._map(name, size)
        dst = torch.frombuffer(mm, dtype=marker.dtype, count=numel).view(marker.shape)
        with torch.no_grad():
            if indices is not None:
                torch.index_select(source, 0, torch.tensor(indices, dtype=torch.long), out=dst)
            elif numel * marker.dtype.itemsize >= _SPLIT and source.is_contiguous():
                flat_dst, flat_src, mid = dst.view(-1), source.view(-1), numel // 2
                rest = _copiers.submit(flat_dst[mid:].copy_, flat_src[mid:])
                flat_dst[:mid].copy_(flat_src[:mid])
                rest.result()
            else:
                dst.copy_(source)
