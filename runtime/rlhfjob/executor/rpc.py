"""The RPC executor: each module lives in worker processes; the driver moves handles.

A model call is submitted to one worker and returns a ``Ref`` at once,
before it runs; the next call takes that Ref as input, and its worker pulls
the value from the producer directly. So consecutive batches pipeline
across workers, with no barrier between stages, and sample tensors never
pass through the driver: the StreamDataset holds ``Row`` references, and
each trainer replica pulls its share of rows from the workers that made
them.

This is the driver's end; the package's docstring lists the other modules.

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

import os
import pickle
from collections import defaultdict
from collections.abc import Callable, Collection, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.rpc as rpc

from rlhfjob.comm import admission
from rlhfjob.comm.channel import ADOPT, Client, Reply, connect
from rlhfjob.comm.env import Peer
from rlhfjob.data import TrainBatch
from rlhfjob.executor.placement import SyncRoute, plan, replicas_by_model, replicas_of
from rlhfjob.executor.protocol import (
    BroadcastParams,
    BuildDataset,
    Call,
    CallDone,
    CopyParams,
    Directory,
    Failure,
    Fetch,
    Free,
    GatherParams,
    Hook,
    LoadState,
    Metrics,
    Operation,
    ParamSpecs,
    Ref,
    Row,
    SaveHook,
    SaveState,
    Setup,
    StateReply,
    Submit,
)
from rlhfjob.executor.pulls import CONNECT_S, gather_rows, serve_fetch
from rlhfjob.executor.worker import remote_start_control, remote_submit
from rlhfjob.flow import Node
from rlhfjob.module import BaseModule
from rlhfjob_operator.spec import JobConfig

__all__ = ["Ref", "Row", "RpcExecutor", "WorkerFailed"]

# What a submission returns: a reply on the control channel, or a torch RPC future.
Pending = Reply | torch.futures.Future[Any]


class WorkerFailed(RuntimeError):
    """A call failed on a worker; the message names it and holds the remote traceback.

    ``retryable`` is True when the worker was lost (a restart can help), False
    when its code raised (it would raise again).
    """

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


# Where a sync may cast: a float32 trainer's weights into a bfloat16 or float16 policy.
_FLOATS = {"torch.float32", "torch.bfloat16", "torch.float16", "torch.float64"}


def check_shares(name: str, samples: int, replicas: int) -> None:
    """Refuse a global batch with fewer samples than data-parallel replicas: a replica
    with no share would skip the gradient all-reduce (or FSDP's gathers) that the
    others wait in."""
    if samples < replicas:
        raise ValueError(
            f"a global batch of {samples} sample(s) cannot give each of the {replicas} "
            f"data-parallel replicas of {name} one: every global batch, an episode's last and "
            f"smaller one included, needs at least models.{name}.num_replica samples (see "
            "runtime.sample_per_episode and runtime.train_global_batch_size)"
        )


def check_sync_specs(
    src: str, dst: str, a: list[tuple[str, tuple[int, ...], str]], b: list[tuple[str, Any, str]]
) -> None:
    """ValueError unless ``dst``'s parameters (name, shape, dtype), ``b``, match ``src``'s,
    ``a``, but for floating dtypes, which the receiver casts (as ``copy_`` does in-process)."""
    alike = [(n, tuple(s)) for n, s, _ in a] == [(n, tuple(s)) for n, s, _ in b]
    dtypes = [(x, y) for (_, _, x), (_, _, y) in zip(a, b, strict=True)] if alike else []
    if not alike or any(x != y and not {x, y} <= _FLOATS for x, y in dtypes):
        diff = sorted(set(a) ^ set(b))[:5]
        raise ValueError(
            f"parameter sync {src} -> {dst}: the models differ in parameter names, shapes or "
            f"dtypes (first differences: {diff}); sync pairs must be the same architecture "
            "(floating dtypes may differ: the receiver casts)"
        )


class RpcExecutor:
    """Runs model calls on the workers named by the peers' published models."""

    def __init__(self, config: JobConfig, peers: Sequence[Peer]) -> None:
        self.config = config
        self.peers = {p.name: p for p in peers}
        self.workers = [p for p in peers if p.rank != 0]
        self.placement = replicas_by_model(peers)
        self.seq: dict[str, int] = defaultdict(int)
        self.next_key = 0
        self.turn: dict[str, int] = defaultdict(int)
        self.pending: dict[Ref, tuple[Peer, Pending]] = {}
        self.calls: dict[Ref, tuple[str, str]] = {}  # (module, method) of calls not yet timed
        self.steps: list[tuple[str, str, float]] = []
        self.scope = 0  # the scope of calls issued now (Executor.begin)
        self.scopes: dict[Ref, int] = {}  # each pending call's scope
        self.stored: dict[int, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        self.groups: dict[str, Any] = {}
        self.sync_plan: dict[tuple[str, str], SyncRoute | None] = {}
        self.wire: dict[tuple[str, str], tuple[str, ...]] = {}  # the source's dtypes
        self.clients: dict[str, Client] = {}
        self.directory: Directory = {}

    # --- plumbing ----------------------------------------------------------------

    def _open_channels(self) -> None:
        """Start every worker's control server and connect to it; the secret goes over RPC."""
        secret = os.urandom(32)
        futures = [
            (p, rpc.rpc_async(p.name, remote_start_control, args=(secret,))) for p in self.workers
        ]
        for peer, fut in futures:
            self.directory[peer.name] = self._wait(peer, fut, "starting the control channel")
        for peer in self.workers:
            address = self.directory[peer.name].address
            try:
                conn = connect(address, secret, timeout=CONNECT_S)
            except (OSError, ConnectionError) as exc:
                raise WorkerFailed(
                    f"cannot reach the control channel of {peer.describe()} at {address}: {exc}",
                    retryable=True,
                ) from None
            conn.send((-1, ADOPT))  # the worker's exec thread reads this connection itself
            self.clients[peer.name] = Client(conn, peer.name)

    def _submit(self, peer: Peer, operation: Operation) -> Pending:
        """Send ``operation`` to ``peer``, next in its order (run by ``HANDLERS[type(operation)]``
        in rlhfjob.executor.operations); torch RPC before the channels open."""
        seq = self.seq[peer.name]
        self.seq[peer.name] = seq + 1
        client = self.clients.get(peer.name)
        if client is not None and not operation.via_rpc:
            return client.request(Submit(seq, operation))
        return rpc.rpc_async(peer.name, remote_submit, args=(Submit(seq, operation),))

    def _wait(self, peer: Peer, fut: Pending, what: str) -> Any:
        """The result of ``fut``; WorkerFailed with the remote traceback, or naming a lost peer."""
        try:
            result = fut.wait()
        except Exception as exc:  # the transport failed: the peer is gone
            raise WorkerFailed(
                f"{what} on {peer.describe()} was lost: {exc}", retryable=True
            ) from None
        if isinstance(result, Failure):
            raise WorkerFailed(result.message, retryable=result.retryable)
        return result

    def _all(self, operation: Operation) -> dict[str, Any]:
        futures = [(p, self._submit(p, operation)) for p in self.workers]
        return {p.name: self._wait(p, f, operation.op) for p, f in futures}

    # --- Executor ------------------------------------------------------------------

    def setup(
        self,
        modules: Sequence[BaseModule],
        *,
        sync_pairs: Sequence[tuple[BaseModule, BaseModule]] = (),
    ) -> None:
        """Place modules, make process groups (data parallel, sync pairs), run setup()."""
        layout = plan(
            self.config,
            list(self.peers.values()),
            modules=[m.name for m in modules],
            sync_pairs=[(src.name, dst.name) for src, dst in sync_pairs],
        )
        self.sync_plan = layout.sync
        self._open_channels()
        by_name = {m.name: m for m in modules}
        futures = []
        for peer in self.workers:
            setup = Setup(
                modules=[by_name[m] for m in peer.models],
                config=self.config,
                groups=layout.groups,
                replicated=layout.replicated.get(peer.name, {}),
                directory=self.directory,
            )
            futures.append((peer, self._submit(peer, setup)))
        # Every rank makes every group, in one order: new_group is collective.
        for spec in layout.groups:
            self.groups[spec.name] = dist.new_group(spec.ranks, backend=spec.backend)
        admission.guard_peers(self.peers.values())  # the groups' gloo listeners
        for peer, fut in futures:
            self._wait(peer, fut, "setup")
        for src, dst in sync_pairs:
            first = self.placement[src.name][0]
            a = self._wait(first, self._submit(first, ParamSpecs(module=src.name)), "param_specs")
            for peer in self.placement[dst.name]:
                b = self._wait(peer, self._submit(peer, ParamSpecs(module=dst.name)), "param_specs")
                check_sync_specs(src.name, dst.name, a, b)
            self.wire[(src.name, dst.name)] = tuple(dtype for _, _, dtype in a)

    def build_dataset(self, module: BaseModule, prompts: list[Any], *, is_eval: bool) -> list[Any]:
        peer = replicas_of(self.placement, module.name)[0]
        return self._wait(
            peer,
            self._submit(peer, BuildDataset(module=module.name, prompts=prompts, is_eval=is_eval)),
            "build_dataset",
        )

    def call(self, node: Node, inputs: Sequence[Any], *, iteration: int | None) -> Any:
        name = node.module.name
        replicas = replicas_of(self.placement, name)
        batch = next((i for i in inputs if isinstance(i, TrainBatch)), None)
        if batch is not None and len(replicas) > 1:
            # Data parallel: each replica trains on its share; gradients are all-reduced.
            check_shares(name, len(batch.samples), len(replicas))
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
        fut = self._submit(
            peer, Call(module=name, method=method, inputs=inputs, iteration=iteration, key=key)
        )
        ref = Ref(peer.name, key)
        self.pending[ref] = (peer, fut)
        self.calls[ref] = (name, method)
        self.scopes[ref] = self.scope
        self.stored[self.scope][peer.name].append(key)
        return ref

    def _done(self, ref: Ref) -> Any:
        peer, fut = self.pending[ref]
        done: CallDone = self._wait(peer, fut, "call")
        return done.count

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
            if isinstance(result, CallDone):
                self.steps.append((module, method, result.seconds))

    def step_seconds(self) -> list[tuple[str, str, float]]:
        self._time_finished()
        steps, self.steps = self.steps, []
        return steps

    def fetch(self, handle: Any) -> Any:
        if not isinstance(handle, Ref):
            return handle
        peer, fut = self.pending[handle]
        done: CallDone = self._wait(peer, fut, "call")
        if done.inline is not None:
            return pickle.loads(done.inline)
        fut = rpc.rpc_async(peer.name, serve_fetch, args=(Fetch(handle.key, None),))
        return self._wait(peer, fut, "fetch")

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
            fut = rpc.rpc_async(peer.name, serve_fetch, args=(Fetch(ref.key, indices),))
            return lambda: self._wait(peer, fut, "fetch")

        return gather_rows(samples, fetch)

    def begin(self, scope: int) -> None:
        self.scope = scope

    def _of(self, scope: int | None) -> list[Ref]:
        return [r for r in self.pending if scope is None or self.scopes[r] == scope]

    def wait(self, scope: int | None = None) -> None:
        for ref in self._of(scope):
            self._done(ref)

    def done(self, scope: int) -> bool:
        return all(self.pending[r][1].done() for r in self._of(scope))

    def release(self, scope: int | None = None) -> None:
        self.wait(scope)
        scopes = list(self.stored) if scope is None else [scope]
        futures = [
            (self.peers[w], self._submit(self.peers[w], Free(keys=keys)))
            for s in scopes
            for w, keys in self.stored.pop(s, {}).items()
            if keys
        ]
        for peer, fut in futures:
            self._wait(peer, fut, "free")
        self._time_finished()
        for ref in self._of(scope):
            self.calls.pop(ref, None)
            del self.pending[ref], self.scopes[ref]

    def hook(self, name: str) -> None:
        self._all(Hook(hook=name))

    def metrics(self, modules: Collection[str] | None = None) -> dict[str, dict[str, float]]:
        return self.metrics_later(modules)()

    def metrics_later(
        self, modules: Collection[str] | None = None
    ) -> Callable[[], dict[str, dict[str, float]]]:
        """Ask the workers holding ``modules`` (every worker when None) now, in their order;
        the function waits for the replies and averages replicas' values."""
        ask = Metrics(modules=None if modules is None else tuple(sorted(modules)))
        peers = [p for p in self.workers if modules is None or set(p.models) & set(modules)]
        futures = [(p, self._submit(p, ask)) for p in peers]

        def replies() -> dict[str, dict[str, float]]:
            totals: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
            for peer, fut in futures:
                for module, metrics in self._wait(peer, fut, ask.op).items():
                    for key, value in metrics.items():
                        totals[module][key].append(float(value))
            return {m: {k: sum(v) / len(v) for k, v in ms.items()} for m, ms in totals.items()}

        return replies

    def sync(self, src: BaseModule, dst: BaseModule) -> int:
        route = self.sync_plan[(src.name, dst.name)]
        # A sharded source's replicas all take part in gathering its parameters whole;
        # those that neither copy nor send are asked to first, so that a worker with a
        # replica of each gathers (src's group) before it receives (the sync's group).
        ends = self.placement[dst.name] if route is None else [route.source]
        gathers = [
            (p, self._submit(p, GatherParams(module=src.name)))
            for p in self.placement[src.name]
            if p not in ends
        ]
        if route is None:
            futures = [
                (p, self._submit(p, CopyParams(src=src.name, dst=dst.name)))
                for p in self.placement[dst.name]
            ]
            moved = sum(self._wait(p, f, "copy") for p, f in futures)
        else:
            # The source sends src's parameters; every target receives them into dst's.
            pairs = [(route.source, src.name), *((p, dst.name) for p in route.targets)]
            futures = []
            for p, m in pairs:
                send = BroadcastParams(
                    module=m,
                    group=route.group,
                    src=route.source.rank,
                    wire=self.wire[(src.name, dst.name)],
                )
                futures.append((p, self._submit(p, send)))
            results = [self._wait(p, f, "parameter sync") for p, f in futures]
            moved = results[0] * len(route.targets)
        for p, f in gathers:
            self._wait(p, f, "parameter sync")
        return moved

    def save_hooks(self, *, iteration: int) -> None:
        self._all(SaveHook(iteration=iteration, firsts=self._firsts()))

    def _firsts(self) -> dict[str, str]:
        return {name: peers[0].name for name, peers in self.placement.items()}

    def state_dicts(self) -> dict[str, dict[str, Any]]:
        """Replica 0's state of every module, with every replica's RNG stream."""
        replies: dict[str, StateReply] = self._all(SaveState(firsts=self._firsts()))
        states: dict[str, dict[str, Any]] = {}
        for reply in replies.values():
            states.update(reply.states)
        for name, peers in self.placement.items():
            states[name]["replica_rng"] = [replies[p.name].rng[name] for p in peers]
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
            futures.append((peer, self._submit(peer, LoadState(states=mine, rngs=rngs))))
        for peer, fut in futures:
            self._wait(peer, fut, "load checkpoint")

    def shutdown(self) -> None:
        """Close the control channels; the process bootstrap shuts RPC down."""
        for client in self.clients.values():
            client.close()
        self.clients.clear()
