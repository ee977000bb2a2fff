"""The RPC executor: each module lives in worker processes; the driver moves handles.

Driver side (``RpcExecutor``): a model call is submitted to one worker and
returns a ``Ref`` at once, before it runs; the next call takes that Ref as
input, and its worker fetches the value from the producer directly. So
consecutive batches pipeline across workers, with no barrier between stages,
and sample tensors never pass through the driver: the StreamDataset holds
``Row`` references, and each trainer replica pulls its share of rows from the
workers that made them.

Worker side (``WorkerRuntime``): submissions carry a per-worker sequence
number and run strictly in that order on one thread, so every module sees its
calls in the order the driver issued them (determinism, bitwise equality with
the in-process executor) while fetches are served concurrently by RPC
threads. A value is kept until the driver releases it at the end of the
episode.

Transports: the driver sends operations over a control channel per worker
(``rlhfjob.comm.channel``: one TCP connection, a few tens of microseconds a
message, where a torch RPC costs about a millisecond); setup and checkpoint
states, which carry weights, take torch RPC. A call's result comes back with
its output when that is small (under 64 KiB pickled), so fetching it costs
nothing more. A worker pulls its inputs from a producer that shares its
/dev/shm over the channel too, large tensors through shared memory
(``rlhfjob.comm.shm``: one copy, straight into the consumer's pooled slot);
from other hosts through torch RPC (TensorPipe).

Deadlock freedom: a call only waits on outputs of calls issued before it,
which come earlier in every worker's order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import os
import pickle
import select
import threading
import time
import traceback
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.rpc as rpc

from rlhfjob.comm import shm
from rlhfjob.comm.broadcast import all_reduce_mean, broadcast_tensors
from rlhfjob.comm.channel import (
    ADOPT,
    NOTHING,
    Client,
    Connection,
    Pickler,
    Reply,
    Server,
    connect,
    reachable_ip,
    replier,
)
from rlhfjob.comm.env import Peer, WorkerEnv
from rlhfjob.data import TrainBatch, split_samples
from rlhfjob.executor.local import (
    copy_parameters,
    load_module_checkpoint,
    merge_inputs,
    module_checkpoint,
)
from rlhfjob.flow import Node
from rlhfjob.module import BaseModule
from rlhfjob_operator.contract import shm_prefix
from rlhfjob_operator.spec import JobConfig

__all__ = ["Ref", "Row", "RpcExecutor", "WorkerFailed", "WorkerRuntime"]

# Operations whose arguments or results carry weights: torch RPC moves their tensors
# without pickling them. Every other operation takes the control channel.
_RPC_OPS = frozenset({"setup", "state", "load"})
# A call's output at most this large (pickled) comes back with the call's reply.
_INLINE_BYTES = 64 << 10
_CONNECT_S = 30.0
# (address of its control server, its /dev/shm domain) by worker name.
Directory = dict[str, tuple[tuple[str, int], str]]
# What a submission returns: a reply on the control channel, or a torch RPC future.
Pending = Reply | torch.futures.Future[Any]


@dataclasses.dataclass(frozen=True)
class Ref:
    """A value stored on worker ``worker`` under ``key``."""

    worker: str
    key: int


@dataclasses.dataclass(frozen=True)
class Row:
    """Sample ``index`` of the batch behind ``ref``."""

    ref: Ref
    index: int


class WorkerFailed(RuntimeError):
    """A call failed on a worker; the message names it and holds the remote traceback.

    ``retryable`` is True when the worker was lost (a restart can help), False
    when its code raised (it would raise again).
    """

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclasses.dataclass(frozen=True)
class _Failure:
    """A failed operation, returned as a value: RPC carries it intact to every waiter.

    Calls that consumed a failed output fail with the same text, so whoever
    waits first sees the original worker and traceback.
    """

    message: str


# --- worker side ----------------------------------------------------------------


class WorkerRuntime:
    """The modules of one worker process and the values they produced."""

    current: WorkerRuntime | None = None

    def __init__(self, env: WorkerEnv) -> None:
        self.env = env
        self.modules: dict[str, BaseModule] = {}
        self.values: dict[int, torch.futures.Future[Any]] = {}
        self.lock = threading.Lock()
        self.jobs: dict[int, tuple[str, tuple[Any, ...], Callable[[Any], None]]] = {}
        self.next_seq = 0
        self.ready = threading.Condition(self.lock)
        self.groups: dict[str, Any] = {}
        self.bucket_bytes = 100 * 2**20
        self.server: Server | None = None
        self.secret = b""
        self.directory: Directory = {}
        self.clients: dict[str, Client] = {}
        self.domain = shm.domain()
        self.pool = shm.Pool(f"{shm_prefix(env.job_name, env.master_port)}{env.rank}_")
        self.writer = shm.Writer()
        # The driver's connection, read by the exec thread itself between operations; the
        # pipe wakes it when an operation comes by torch RPC instead.
        self.driver: Connection | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        threading.Thread(target=self._loop, name="rlhfjob-exec", daemon=True).start()

    # --- the control channel -------------------------------------------------------

    def start_control(self, secret: bytes) -> tuple[tuple[str, int], str]:
        """Serve the control channel (once); returns its address and this /dev/shm's domain."""
        with self.lock:
            if self.server is None:
                self.secret = secret
                host = reachable_ip(self.env.master_addr)
                self.server = Server(host, secret, self.handle, adopt=self._adopt)
            elif secret != self.secret:
                raise ValueError("the control channel was started with another secret")
        return self.server.address, self.domain

    def handle(self, request: tuple[Any, ...], reply: Callable[[Any], None]) -> None:
        """One request of the control channel: a submission, or a pull of a stored value."""
        kind = request[0]
        if kind == "submit":
            _, seq, op, args = request
            self.submit(seq, op, args, reply)
            return
        _, key, indices = request[:3]
        value = self.value(key).wait()  # this connection's thread waits; others go on
        if isinstance(value, _Failure):
            reply((value, []))
            return
        skeleton, sources, markers = shm.layout(value, indices)
        if kind == "layout":
            reply((skeleton, markers))
        elif kind == "fill":
            targets, dropped = request[3], request[4]
            self.writer.forget(dropped)
            for source, marker, target in zip(sources, markers, targets, strict=True):
                self.writer.write(source, marker, indices, target)
            reply(None)
        else:
            raise ValueError(f"unknown control request {kind!r}")

    def _client(self, worker: str) -> Client | None:
        """The channel to ``worker`` when it shares this /dev/shm, else None (torch RPC)."""
        entry = self.directory.get(worker)
        if entry is None or not self.domain or entry[1] != self.domain:
            return None
        with self.lock:
            client = self.clients.get(worker)
        if client is None:
            client = Client(connect(entry[0], self.secret, timeout=_CONNECT_S), worker)
            with self.lock:
                client = self.clients.setdefault(worker, client)
        return client

    def pull(self, ref: Ref, indices: list[int] | None) -> Callable[[], Any]:
        """Start fetching ``ref``'s value (rows ``indices``); returns a function waiting for it."""
        client = self._client(ref.worker)
        if client is None:
            fut = rpc.rpc_async(ref.worker, _fetch, args=(ref.key, indices))
            return lambda: _checked(fut.wait())
        first = client.request(("layout", ref.key, indices))

        def finish() -> Any:
            skeleton, markers = first.wait()
            _checked(skeleton)
            if not markers:
                return skeleton
            slots: list[Any] = []
            try:
                for m in markers:
                    slots.append(self.pool.alloc(math.prod(m.shape) * m.dtype.itemsize))
            except OSError:  # /dev/shm is full: this value takes torch RPC instead
                for slot in slots:
                    self.pool.release(slot)
                return _checked(rpc.rpc_sync(ref.worker, _fetch, args=(ref.key, indices)))
            try:
                targets = [(slot.name, slot.size) for slot in slots]
                dropped = self.pool.dropped_for(ref.worker)
                client.request(("fill", ref.key, indices, targets, dropped)).wait()
            except BaseException:
                for slot in slots:
                    self.pool.release(slot)
                raise
            tensors = [self.pool.tensor(s, m) for s, m in zip(slots, markers, strict=True)]
            return shm.rebuild(skeleton, tensors)

        return finish

    def value(self, key: int) -> torch.futures.Future[Any]:
        with self.lock:
            if key not in self.values:
                self.values[key] = torch.futures.Future()
            return self.values[key]

    def submit(self, seq: int, op: str, args: tuple[Any, ...], done: Callable[[Any], None]) -> None:
        """Queue operation ``seq``; ``done(result)`` is called on the exec thread when it ran."""
        with self.ready:
            self.jobs[seq] = (op, args, done)
            self.ready.notify()
            reading = self.driver is not None
        if reading and threading.current_thread().name != "rlhfjob-exec":
            with contextlib.suppress(BlockingIOError):
                os.write(self._wake_w, b"\0")

    def _adopt(self, conn: Connection) -> None:
        with self.ready:
            self.driver = conn
            self.ready.notify()

    def _take(self) -> tuple[str, tuple[Any, ...], Callable[[Any], None]] | None:
        """The next operation in order, or None after waiting for more (reading the
        driver's connection, if there is one, meanwhile)."""
        with self.ready:
            if self.next_seq in self.jobs:
                self.next_seq += 1
                return self.jobs.pop(self.next_seq - 1)
            conn = self.driver
            if conn is None:
                self.ready.wait()
                return None
        try:
            while (frame := conn.recv(block=False)) is not NOTHING:
                self._take_frame(conn, frame)
            with self.ready:
                if self.next_seq in self.jobs:
                    return None
            select.select([conn.sock.fileno(), self._wake_r], [], [])
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 4096)
        except (EOFError, OSError):  # the driver closed its side: back to RPC alone
            with self.ready:
                if self.driver is conn:
                    self.driver = None
            conn.close()
        return None

    def _take_frame(self, conn: Connection, frame: tuple[int, Any]) -> None:
        rid, request = frame
        if request[0] != "submit":
            conn.send((rid, False, f"the driver's channel takes submissions, not {request[0]!r}"))
            return
        _, seq, op, args = request
        self.submit(seq, op, args, replier(conn, rid))  # a gone driver: the heartbeat ends us

    def _loop(self) -> None:
        while True:
            job = self._take()
            if job is None:
                continue
            op, args, done = job
            try:
                result = getattr(self, f"op_{op}")(*args)
            except _Upstream as exc:
                result = exc.failure
            except BaseException:  # every failure goes back to the driver
                result = _Failure(
                    f"{op} failed on {self.env.name} (role {self.env.role}, replica "
                    f"{self.env.replica}, pid {os.getpid()}):\n{traceback.format_exc()}"
                )
            if isinstance(result, _Failure) and op == "call":
                self.value(args[4]).set_result(result)
            done(result)

    # --- fetching inputs -----------------------------------------------------

    def resolve(self, item: Any) -> Any:
        if isinstance(item, Ref):
            if item.worker == self.env.name:
                return _checked(self.value(item.key).wait())
            return self.pull(item, None)()
        if isinstance(item, TrainBatch):
            return item.micro_batches(self.rows(item.samples))
        return item

    def rows(self, samples: Sequence[Any]) -> list[Any]:
        """Per-sample dicts for ``samples`` (Rows or dicts), pulled one request per source."""

        def fetch(ref: Ref, indices: list[int]) -> Callable[[], Any]:
            if ref.worker == self.env.name:
                return lambda: _select(_checked(self.value(ref.key).wait()), indices)
            return self.pull(ref, indices)

        return _gather_rows(samples, fetch)

    # --- operations, run in submission order ----------------------------------

    def op_setup(
        self,
        modules: list[BaseModule],
        config: JobConfig,
        groups: list[tuple[str, list[int], str]],
        replicated: dict[str, str],
        directory: Directory,
    ) -> None:
        self.directory = directory
        self.bucket_bytes = config.runtime.coalesced_buffer_mb * 2**20
        for name, ranks, backend in groups:
            group = dist.new_group(ranks, backend=backend)
            if self.env.rank in ranks:
                self.groups[name] = group
        for module in modules:
            module.bind(config, replica_id=self.env.replica)
            module.run_hook(module.setup)
            self.modules[module.name] = module
        for name, group_name in replicated.items():
            module = self.modules[name]
            group = self.groups[group_name]
            ranks = dist.get_process_group_ranks(group)
            # Data-parallel replicas start from replica 0's weights, like DDP.
            params = list(module.named_parameters_to_sync().values())
            broadcast_tensors(params, src=min(ranks), group=group, bucket_bytes=self.bucket_bytes)
            if module.optimizer is not None and module.model is not None:
                model = module.model

                def reduce(*_: Any, _model: torch.nn.Module = model, _group: Any = group) -> None:
                    grads = [p.grad for p in _model.parameters() if p.grad is not None]
                    all_reduce_mean(grads, group=_group, bucket_bytes=self.bucket_bytes)

                module.optimizer.register_step_pre_hook(reduce)

    def op_param_specs(self, name: str) -> list[tuple[str, tuple[int, ...], str]]:
        params = self.modules[name].named_parameters_to_sync()
        return [(k, tuple(v.shape), str(v.dtype)) for k, v in sorted(params.items())]

    def op_build_dataset(self, name: str, prompts: list[Any], is_eval: bool) -> list[Any]:
        module = self.modules[name]
        return list(module.run_hook(module.build_dataset, prompts, is_eval))

    def op_call(
        self, name: str, method: str, inputs: list[Any], iteration: int | None, key: int
    ) -> tuple[int | None, float, bytes | None]:
        """Returns (sample count or None, seconds the call ran once its inputs were in, the
        output pickled when it is small, else None)."""
        module = self.modules[name]
        data = merge_inputs(f"{name}.{method}", [self.resolve(i) for i in inputs])
        start = time.perf_counter()
        out = module.call_hook(method, data, iteration)
        seconds = time.perf_counter() - start
        self.value(key).set_result(out)
        count = len(split_samples(out)) if isinstance(out, dict) else None
        return (count, seconds, _pickled_if_small(out))

    def op_hook(self, hook: str) -> None:
        for module in self.modules.values():
            module.run_hook(getattr(module, hook))

    def op_metrics(self) -> dict[str, dict[str, float]]:
        return {n: dict(m.get_and_clear_metrics() or {}) for n, m in self.modules.items()}

    def op_copy(self, src: str, dst: str) -> int:
        return copy_parameters(self.modules[src], self.modules[dst])

    def op_broadcast(self, name: str, group: str, src: int) -> int:
        module = self.modules[name]
        params = module.named_parameters_to_sync()
        tensors = [params[k] for k in sorted(params)]
        return broadcast_tensors(
            tensors,
            src=src,
            group=self.groups[group],
            bucket_bytes=self.bucket_bytes,
            # The model's own parameters: the first sync packs them, later ones send in place.
            packing=type(module).named_parameters_to_sync is BaseModule.named_parameters_to_sync,
        )

    def op_state(self, iteration: int, firsts: dict[str, str]) -> dict[str, Any]:
        """States of the modules whose first replica this is, and every module's RNG."""
        states = {}
        for name, module in self.modules.items():
            if firsts[name] == self.env.name:
                states[name] = module_checkpoint(module)
                module.run_hook(module.save_checkpoint, iteration)
        rng = {n: m.rng.state for n, m in self.modules.items() if m.rng is not None}
        return {"states": states, "rng": rng}

    def op_load(self, states: dict[str, dict[str, Any]], rngs: dict[str, Any]) -> None:
        for name, module in self.modules.items():
            if name in states:
                load_module_checkpoint(module, states[name])
            if name in rngs and module.rng is not None:
                module.rng.state = rngs[name]

    def op_free(self, keys: list[int]) -> None:
        with self.lock:
            for key in keys:
                self.values.pop(key, None)


class _TooBig(Exception):
    pass


class _Capped(io.BytesIO):
    def write(self, data: Any) -> int:
        if self.tell() + len(data) > _INLINE_BYTES:
            raise _TooBig
        return super().write(data)


def _pickled_if_small(value: Any) -> bytes | None:
    """``value`` pickled when that takes at most ``_INLINE_BYTES``, else None.

    Large tensors are refused before pickling; otherwise the pickler stops at
    the limit, so a large output costs at most that much work. An output
    that cannot be pickled is not inlined (the driver's fetch then reports it).
    """
    items = value.values() if isinstance(value, dict) else (value,)
    if any(isinstance(v, torch.Tensor) and v.nbytes > _INLINE_BYTES for v in items):
        return None
    buffer = _Capped()
    try:
        Pickler(buffer).dump(value)
    except _TooBig:
        return None
    except Exception:  # unpicklable: the driver's fetch over RPC says so
        return None
    return buffer.getvalue()


class _Upstream(Exception):
    def __init__(self, failure: _Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


def _checked(value: Any) -> Any:
    """``value``, unless it is the failure of the call that should have made it."""
    if isinstance(value, _Failure):
        raise _Upstream(value)
    return value


def _select(batch: Any, indices: list[int] | None) -> Any:
    if indices is None or not isinstance(batch, dict):
        return batch
    index = torch.tensor(indices)
    return {
        k: v.index_select(0, index) if isinstance(v, torch.Tensor) else [v[i] for i in indices]
        for k, v in batch.items()
    }


def _gather_rows(
    samples: Sequence[Any], fetch: Callable[[Ref, list[int]], Callable[[], Any]]
) -> list[Any]:
    """``samples`` with every Row replaced by its per-sample dict, in order.

    ``fetch(ref, indices)`` starts one request for those rows of ``ref``'s batch
    and returns a function that waits for the batch; every request is started
    before any is waited for. Entries that are not Rows pass through.
    """
    wanted: dict[Ref, list[int]] = defaultdict(list)
    for sample in samples:
        if isinstance(sample, Row):
            wanted[sample.ref].append(sample.index)
    waits = {ref: fetch(ref, indices) for ref, indices in wanted.items()}
    pulled: dict[tuple[Ref, int], Any] = {}
    for ref, indices in wanted.items():
        for index, sample in zip(indices, split_samples(waits[ref]()), strict=True):
            pulled[(ref, index)] = sample
    return [pulled[(s.ref, s.index)] if isinstance(s, Row) else s for s in samples]


def _runtime() -> WorkerRuntime:
    runtime = WorkerRuntime.current
    if runtime is None:
        raise RuntimeError("this process is not an rlhfjob worker")
    return runtime


@rpc.functions.async_execution
def _submit(seq: int, op: str, args: tuple[Any, ...]) -> torch.futures.Future[Any]:
    done: torch.futures.Future[Any] = torch.futures.Future()
    _runtime().submit(seq, op, args, done.set_result)
    return done


def _start_control(secret: bytes) -> tuple[tuple[str, int], str]:
    return _runtime().start_control(secret)


@rpc.functions.async_execution
def _fetch(key: int, indices: list[int] | None) -> torch.futures.Future[Any]:
    return _runtime().value(key).then(lambda fut: _select(fut.value(), indices))


# --- driver side ----------------------------------------------------------------


class RpcExecutor:
    """Runs model calls on the workers named by the peers' published models."""

    def __init__(self, config: JobConfig, peers: Sequence[Peer]) -> None:
        self.config = config
        self.peers = {p.name: p for p in peers}
        self.workers = [p for p in peers if p.rank != 0]
        self.placement: dict[str, list[Peer]] = defaultdict(list)
        for peer in sorted(self.workers, key=lambda p: (p.rank, p.replica)):
            for model in peer.models:
                self.placement[model].append(peer)
        self.seq: dict[str, int] = defaultdict(int)
        self.next_key = 0
        self.turn: dict[str, int] = defaultdict(int)
        self.pending: dict[Ref, tuple[Peer, Pending]] = {}
        self.calls: dict[Ref, tuple[str, str]] = {}  # (module, method) of calls not yet timed
        self.steps: list[tuple[str, str, float]] = []
        self.stored: dict[str, list[int]] = defaultdict(list)
        self.groups: dict[str, Any] = {}
        self.sync_plan: dict[tuple[str, str], tuple[str, list[Peer]] | None] = {}
        self.clients: dict[str, Client] = {}
        self.directory: Directory = {}

    # --- plumbing ----------------------------------------------------------------

    def _open_channels(self) -> None:
        """Start every worker's control server and connect to it; the secret goes over RPC."""
        secret = os.urandom(32)
        futures = [(p, rpc.rpc_async(p.name, _start_control, args=(secret,))) for p in self.workers]
        for peer, fut in futures:
            self.directory[peer.name] = self._wait(peer, fut, "starting the control channel")
        for peer in self.workers:
            address = self.directory[peer.name][0]
            try:
                conn = connect(address, secret, timeout=_CONNECT_S)
            except (OSError, ConnectionError) as exc:
                raise WorkerFailed(
                    f"cannot reach the control channel of {peer.describe()} at {address}: {exc}",
                    retryable=True,
                ) from None
            conn.send((-1, ADOPT))  # the worker's exec thread reads this connection itself
            self.clients[peer.name] = Client(conn, peer.name)

    def _submit(self, peer: Peer, op: str, *args: Any) -> Pending:
        seq = self.seq[peer.name]
        self.seq[peer.name] = seq + 1
        client = self.clients.get(peer.name)
        if client is not None and op not in _RPC_OPS:
            return client.request(("submit", seq, op, args))
        return rpc.rpc_async(peer.name, _submit, args=(seq, op, args))

    def _wait(self, peer: Peer, fut: Pending, what: str) -> Any:
        """The result of ``fut``; WorkerFailed with the remote traceback, or naming a lost peer."""
        try:
            result = fut.wait()
        except Exception as exc:  # the transport failed: the peer is gone
            raise WorkerFailed(
                f"{what} on {peer.describe()} was lost: {exc}", retryable=True
            ) from None
        if isinstance(result, _Failure):
            raise WorkerFailed(result.message)
        return result

    def _all(self, op: str, *args: Any) -> dict[str, Any]:
        futures = [(p, self._submit(p, op, *args)) for p in self.workers]
        return {p.name: self._wait(p, f, op) for p, f in futures}

    def _replicas(self, module: BaseModule) -> list[Peer]:
        peers = self.placement.get(module.name)
        if not peers:
            raise ValueError(
                f"model {module.name!r} has no worker: add models.{module.name} to the job spec "
                "so the launcher starts one"
            )
        return peers

    # --- Executor ------------------------------------------------------------------

    def setup(
        self,
        modules: Sequence[BaseModule],
        *,
        sync_pairs: Sequence[tuple[BaseModule, BaseModule]] = (),
    ) -> None:
        """Place modules, make process groups (data parallel, sync pairs), run setup()."""
        for module in modules:
            self._replicas(module)
        unused = sorted(set(self.placement) - {m.name for m in modules})
        if unused:
            raise ValueError(
                f"the job spec starts workers for models {unused}, which no flow uses; remove "
                "them from spec.models or use them"
            )
        backend = "nccl" if all(p.cuda for p in self.workers) else "gloo"
        groups: list[tuple[str, list[int], str]] = []
        replicated: dict[str, dict[str, str]] = defaultdict(dict)
        for module in modules:
            replicas = self.placement[module.name]
            if self.config.model(module.name).trainable and len(replicas) > 1:
                gname = f"dp/{module.name}"
                groups.append((gname, [p.rank for p in replicas], backend))
                for p in replicas:
                    replicated[p.name][module.name] = gname
        for src, dst in sync_pairs:
            s, d = self.placement[src.name], self.placement[dst.name]
            if {p.name for p in d} <= {p.name for p in s}:
                self.sync_plan[(src.name, dst.name)] = None  # colocated: copy in place
                continue
            gname = f"sync/{src.name}/{dst.name}"
            groups.append((gname, sorted({s[0].rank, *(p.rank for p in d)}), backend))
            self.sync_plan[(src.name, dst.name)] = (gname, [s[0], *d])
        self._open_channels()
        by_name = {m.name: m for m in modules}
        futures = [
            (
                peer,
                self._submit(
                    peer,
                    "setup",
                    [by_name[m] for m in peer.models],
                    self.config,
                    groups,
                    replicated.get(peer.name, {}),
                    self.directory,
                ),
            )
            for peer in self.workers
        ]
        # Every rank makes every group, in one order: new_group is collective.
        for name, ranks, group_backend in groups:
            self.groups[name] = dist.new_group(ranks, backend=group_backend)
        for peer, fut in futures:
            self._wait(peer, fut, "setup")
        for src, dst in sync_pairs:
            first = self.placement[src.name][0]
            a = self._wait(first, self._submit(first, "param_specs", src.name), "param_specs")
            for peer in self.placement[dst.name]:
                b = self._wait(peer, self._submit(peer, "param_specs", dst.name), "param_specs")
                if a != b:
                    diff = sorted(set(a) ^ set(b))[:5]
                    raise ValueError(
                        f"parameter sync {src.name} -> {dst.name}: the models differ in "
                        f"parameter names, shapes or dtypes (first differences: {diff}); sync "
                        "pairs must be the same architecture"
                    )

    def build_dataset(self, module: BaseModule, prompts: list[Any], *, is_eval: bool) -> list[Any]:
        peer = self._replicas(module)[0]
        return self._wait(
            peer,
            self._submit(peer, "build_dataset", module.name, prompts, is_eval),
            "build_dataset",
        )

    def call(self, node: Node, inputs: Sequence[Any], *, iteration: int | None) -> Any:
        name = node.module.name
        replicas = self._replicas(node.module)
        batch = next((i for i in inputs if isinstance(i, TrainBatch)), None)
        if batch is not None and len(replicas) > 1:
            # Data parallel: each replica trains on its share; gradients are all-reduced.
            refs = []
            for index, peer in enumerate(replicas):
                share = [batch.shard(index, len(replicas)) if i is batch else i for i in inputs]
                refs.append(self._issue(peer, name, node.method, share, iteration))
            return refs[0]
        peer = replicas[self.turn[name] % len(replicas)]
        self.turn[name] += 1
        return self._issue(peer, name, node.method, list(inputs), iteration)

    def _issue(
        self, peer: Peer, name: str, method: str, inputs: list[Any], iteration: int | None
    ) -> Ref:
        key = self.next_key
        self.next_key += 1
        fut = self._submit(peer, "call", name, method, inputs, iteration, key)
        ref = Ref(peer.name, key)
        self.pending[ref] = (peer, fut)
        self.calls[ref] = (name, method)
        self.stored[peer.name].append(key)
        return ref

    def _done(self, ref: Ref) -> Any:
        peer, fut = self.pending[ref]
        count, _seconds, _inline = self._wait(peer, fut, "call")
        return count

    def _time_finished(self) -> None:
        """Move the run times of finished calls into ``steps`` (failures are raised
        by whoever waits on them, not here)."""
        for ref, (module, method) in list(self.calls.items()):
            fut = self.pending[ref][1]
            if not fut.done():
                continue
            del self.calls[ref]
            try:
                result = fut.value()
            except Exception:  # the transport failed: _wait reports it
                continue
            if isinstance(result, tuple):
                self.steps.append((module, method, result[1]))

    def step_seconds(self) -> list[tuple[str, str, float]]:
        self._time_finished()
        steps, self.steps = self.steps, []
        return steps

    def fetch(self, handle: Any) -> Any:
        if not isinstance(handle, Ref):
            return handle
        peer, fut = self.pending[handle]
        _count, _seconds, inline = self._wait(peer, fut, "call")
        if inline is not None:
            return pickle.loads(inline)
        return self._wait(peer, rpc.rpc_async(peer.name, _fetch, args=(handle.key, None)), "fetch")

    def samples(self, handle: Any, *, label: str) -> list[Any]:
        count = self._done(handle)
        if count is None:
            raise ValueError(
                f"{label} returned None but its output is the env flow's result; return a "
                "dict of batched values"
            )
        return [Row(handle, i) for i in range(count)]

    def materialize(self, samples: list[Any]) -> list[Any]:
        def fetch(ref: Ref, indices: list[int]) -> Callable[[], Any]:
            peer = self.peers[ref.worker]
            fut = rpc.rpc_async(peer.name, _fetch, args=(ref.key, indices))
            return lambda: self._wait(peer, fut, "fetch")

        return _gather_rows(samples, fetch)

    def wait(self) -> None:
        for ref in list(self.pending):
            self._done(ref)

    def release(self) -> None:
        self.wait()
        futures = [
            (self.peers[w], self._submit(self.peers[w], "free", keys))
            for w, keys in self.stored.items()
            if keys
        ]
        for peer, fut in futures:
            self._wait(peer, fut, "free")
        self._time_finished()
        self.calls.clear()
        self.pending.clear()
        self.stored.clear()

    def hook(self, name: str) -> None:
        self._all("hook", name)

    def metrics(self) -> dict[str, dict[str, float]]:
        """Each module's metrics; replicas' values are averaged."""
        totals: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for per_worker in self._all("metrics").values():
            for module, metrics in per_worker.items():
                for key, value in metrics.items():
                    totals[module][key].append(float(value))
        return {m: {k: sum(v) / len(v) for k, v in ms.items()} for m, ms in totals.items()}

    def sync(self, src: BaseModule, dst: BaseModule, *, bucket_mb: int) -> int:
        del bucket_mb  # the workers' buckets were sized from the config at setup
        plan = self.sync_plan[(src.name, dst.name)]
        if plan is None:
            futures = [
                (p, self._submit(p, "copy", src.name, dst.name)) for p in self.placement[dst.name]
            ]
            moved = sum(self._wait(p, f, "copy") for p, f in futures)
        else:
            gname, (source, *targets) = plan
            futures = [(source, self._submit(source, "broadcast", src.name, gname, source.rank))]
            futures += [
                (p, self._submit(p, "broadcast", dst.name, gname, source.rank)) for p in targets
            ]
            results = [self._wait(p, f, "parameter sync") for p, f in futures]
            moved = results[0] * len(targets)
        return moved

    def state_dicts(self, *, iteration: int) -> dict[str, dict[str, Any]]:
        """Replica 0's state of every module, with every replica's RNG stream."""
        firsts = {name: peers[0].name for name, peers in self.placement.items()}
        replies = self._all("state", iteration, firsts)
        states: dict[str, dict[str, Any]] = {}
        for reply in replies.values():
            states.update(reply["states"])
        for name, peers in self.placement.items():
            states[name]["replica_rng"] = [replies[p.name]["rng"][name] for p in peers]
        return states

    def load_state_dicts(self, states: dict[str, dict[str, Any]]) -> None:
        futures = []
        for peer in self.workers:
            mine = {n: states[n] for n in peer.models if n in states}
            rngs = {}
            for n in peer.models:
                replica_rng = states.get(n, {}).get("replica_rng")
                index = [p.name for p in self.placement[n]].index(peer.name)
                if replica_rng and index < len(replica_rng):
                    rngs[n] = replica_rng[index]
            futures.append((peer, self._submit(peer, "load", mine, rngs)))
        for peer, fut in futures:
            self._wait(peer, fut, "load checkpoint")

    def shutdown(self) -> None:
        """Close the control channels; the process bootstrap shuts RPC down."""
        for client in self.clients.values():
            client.close()
        self.clients.clear()
