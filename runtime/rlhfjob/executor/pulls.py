"""One worker's end of the data plane: the values it stores, and pulls of its inputs.

A call's output stays on the worker that made it (``Exchange.value``) until
the driver frees it. A consumer pulls what it needs straight from the
producer: over the producer's control channel when both share a /dev/shm
(``Layout`` for the small parts and the large tensors' shapes, then
``Fill`` to write those tensors into the consumer's pooled shared-memory
slots: one copy), else by torch RPC (``Fetch``, TensorPipe). A value whose
call failed travels as its ``Failure``; the consumer raises ``Upstream``
with it, so its own call fails with the producer's text.
"""

from __future__ import annotations

import math
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
import torch.distributed.rpc as rpc

from rlhfjob.comm import shm
from rlhfjob.comm.channel import Client, connect
from rlhfjob.data import TrainBatch, split_samples
from rlhfjob.executor.protocol import (
    Directory,
    Failure,
    Fetch,
    Fill,
    Joined,
    Layout,
    LayoutReply,
    Ref,
    Row,
)

__all__ = ["CONNECT_S", "Exchange", "Upstream", "checked", "gather_rows", "select", "serve_fetch"]

CONNECT_S = 30.0


class Upstream(Exception):
    """An input's producer failed; ``failure`` is its report, passed on unchanged."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


def checked(value: Any) -> Any:
    """``value``, unless it is the failure of the call that should have made it."""
    if isinstance(value, Failure):
        raise Upstream(value)
    return value


def select(batch: Any, indices: list[int] | None) -> Any:
    """Rows ``indices`` of a batch dict; anything else (or all rows, for None) as it is."""
    if indices is None or not isinstance(batch, dict):
        return batch
    index = torch.tensor(indices)
    return {
        k: v.index_select(0, index) if isinstance(v, torch.Tensor) else [v[i] for i in indices]
        for k, v in batch.items()
    }


def gather_rows(
    samples: Sequence[Any], fetch: Callable[[Ref, list[int]], Callable[[], Any]]
) -> list[Any]:
    """``samples`` with every Row replaced by its per-sample dict, and every Joined by
    the merge of its parts' dicts (in order: a later part's key wins), in order.

    ``fetch(ref, indices)`` starts one request for those rows of ``ref``'s batch
    and returns a function that waits for the batch; every request is started
    before any is waited for. Entries that are neither pass through.
    """
    wanted: dict[Ref, list[int]] = defaultdict(list)
    for sample in samples:
        for row in _rows_of(sample):
            wanted[row.ref].append(row.index)
    waits = {ref: fetch(ref, indices) for ref, indices in wanted.items()}
    pulled: dict[tuple[Ref, int], Any] = {}
    for ref, indices in wanted.items():
        for index, sample in zip(indices, split_samples(waits[ref]()), strict=True):
            pulled[(ref, index)] = sample

    def value(sample: Any) -> Any:
        if isinstance(sample, Row):
            return pulled[(sample.ref, sample.index)]
        if isinstance(sample, Joined):
            merged: dict[str, Any] = {}
            for row in sample.parts:
                merged.update(pulled[(row.ref, row.index)])
            return merged
        return sample

    return [value(s) for s in samples]


def _rows_of(sample: Any) -> tuple[Row, ...]:
    if isinstance(sample, Row):
        return (sample,)
    if isinstance(sample, Joined):
        return sample.parts
    return ()


class Exchange:
    """The values of worker ``name`` and its channels to the producers it pulls from.

    ``secret`` (the control channel's) and ``directory`` (every worker's
    endpoint) are set before the first pull; until then, and for producers
    on another /dev/shm, pulls take torch RPC.
    """

    local: ClassVar[Exchange | None] = None  # this process's, served to torch RPC

    def __init__(self, name: str, *, shm_prefix: str) -> None:
        self.name = name
        self.secret = b""
        self.directory: Directory = {}
        self.domain = shm.domain()
        self.pool = shm.Pool(shm_prefix)
        self.writer = shm.Writer()
        self._lock = threading.Lock()
        self._values: dict[int, torch.futures.Future[Any]] = {}
        self._clients: dict[str, Client] = {}

    # --- stored values -------------------------------------------------------------

    def value(self, key: int) -> torch.futures.Future[Any]:
        """The future of value ``key``, made unset when nothing asked for it yet (a pull
        may arrive before the call that makes it has run)."""
        with self._lock:
            if key not in self._values:
                self._values[key] = torch.futures.Future()
            return self._values[key]

    def free(self, keys: Sequence[int]) -> None:
        """Drop the values ``keys``; keys never stored are ignored."""
        with self._lock:
            for key in keys:
                self._values.pop(key, None)

    # --- serving pulls (the producer's side) ------------------------------------------

    def serve_layout(self, request: Layout, reply: Callable[[Any], None]) -> None:
        """Reply the LayoutReply of value ``request.key`` once it is made (this connection's
        thread waits; others go on)."""
        value = self.value(request.key).wait()
        if isinstance(value, Failure):
            reply(LayoutReply(value, []))
            return
        skeleton, _sources, markers = shm.layout(value, request.indices)
        reply(LayoutReply(skeleton, markers))

    def serve_fill(self, request: Fill, reply: Callable[[Any], None]) -> None:
        """Write value ``request.key``'s large tensors into the consumer's slots; reply None
        (at once, writing nothing, when the value is a failure)."""
        value = self.value(request.key).wait()
        if isinstance(value, Failure):
            reply(None)
            return
        _skeleton, sources, markers = shm.layout(value, request.indices)
        self.writer.forget(request.dropped)
        for source, marker, target in zip(sources, markers, request.targets, strict=True):
            self.writer.write(source, marker, request.indices, target)
        reply(None)

    # --- pulling (the consumer's side) -------------------------------------------------

    def resolve(self, item: Any) -> Any:
        """A call's input as data: a Ref's value, a TrainBatch's micro-batches of pulled
        rows; anything else as it is. Upstream when a producer failed."""
        if isinstance(item, Ref):
            if item.worker == self.name:
                return checked(self.value(item.key).wait())
            return self.pull(item, None)()
        if isinstance(item, TrainBatch):
            return item.micro_batches(self.rows(item.samples))
        return item

    def rows(self, samples: Sequence[Any]) -> list[Any]:
        """Per-sample dicts for ``samples`` (Rows or dicts), pulled one request per source."""

        def fetch(ref: Ref, indices: list[int]) -> Callable[[], Any]:
            if ref.worker == self.name:
                return lambda: select(checked(self.value(ref.key).wait()), indices)
            return self.pull(ref, indices)

        return gather_rows(samples, fetch)

    def _client(self, worker: str) -> Client | None:
        """The channel to ``worker`` when it shares this /dev/shm, else None (torch RPC)."""
        entry = self.directory.get(worker)
        if entry is None or not self.domain or entry.domain != self.domain:
            return None
        with self._lock:
            client = self._clients.get(worker)
        if client is None:
            client = Client(connect(entry.address, self.secret, timeout=CONNECT_S), worker)
            with self._lock:
                client = self._clients.setdefault(worker, client)
        return client

    def pull(self, ref: Ref, indices: list[int] | None) -> Callable[[], Any]:
        """Start fetching ``ref``'s value (rows ``indices``); returns a function waiting for it.

        When /dev/shm cannot hold the value's tensors, that value takes torch RPC.
        """
        client = self._client(ref.worker)
        if client is None:
            fut = rpc.rpc_async(ref.worker, serve_fetch, args=(Fetch(ref.key, indices),))
            return lambda: checked(fut.wait())
        first = client.request(Layout(ref.key, indices))

        def finish() -> Any:
            layout: LayoutReply = first.wait()
            skeleton = checked(layout.skeleton)
            if not layout.markers:
                return skeleton
            slots: list[Any] = []
            try:
                for m in layout.markers:
                    slots.append(self.pool.alloc(math.prod(m.shape) * m.dtype.itemsize))
            except OSError:  # /dev/shm is full: this value takes torch RPC instead
                for slot in slots:
                    self.pool.release(slot)
                return checked(
                    rpc.rpc_sync(ref.worker, serve_fetch, args=(Fetch(ref.key, indices),))
                )
            try:
                targets = [(slot.name, slot.size) for slot in slots]
                dropped = self.pool.dropped_for(ref.worker)
                client.request(Fill(ref.key, indices, targets, dropped)).wait()
            except BaseException:
                for slot in slots:
                    self.pool.release(slot)
                raise
            tensors = [self.pool.tensor(s, m) for s, m in zip(slots, layout.markers, strict=True)]
            return shm.rebuild(skeleton, tensors)

        return finish


@rpc.functions.async_execution
def serve_fetch(request: Fetch) -> torch.futures.Future[Any]:
    """Torch RPC's pull: rows ``request.indices`` of this process's value ``request.key``
    (its Failure as it is), once made."""
    exchange = Exchange.local
    if exchange is None:
        raise RuntimeError("this process is not an rlhfjob worker")
    return exchange.value(request.key).then(lambda fut: select(fut.value(), request.indices))
