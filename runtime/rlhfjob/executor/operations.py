"""What a worker does for each operation the driver submits: ``HANDLERS``, by message type.

Each handler runs on the worker's exec thread, in submission order, and
returns the reply; an exception becomes a ``Failure`` naming the worker (see
``WorkerRuntime``). From a driver call site such as ``Call(...)`` the
handler is ``HANDLERS[Call]``, ``run_call``.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from rlhfjob import context, sharding
from rlhfjob.comm import admission
from rlhfjob.comm.broadcast import all_reduce_mean, broadcast_tensors
from rlhfjob.comm.channel import Pickler
from rlhfjob.data import split_samples
from rlhfjob.executor.local import (
    copy_parameters,
    load_module_checkpoint,
    merge_inputs,
    module_checkpoint,
    sync_parameters,
)
from rlhfjob.executor.protocol import (
    BroadcastParams,
    BuildDataset,
    Call,
    CallDone,
    CopyParams,
    Free,
    GatherParams,
    Hook,
    LoadState,
    Metrics,
    ParamSpecs,
    SaveHook,
    SaveState,
    Setup,
    StateReply,
)
from rlhfjob.module import BaseModule

if TYPE_CHECKING:
    from rlhfjob.executor.worker import WorkerRuntime

__all__ = ["HANDLERS", "INLINE_BYTES", "pickled_if_small"]

# A call's output at most this large (pickled) comes back with the call's reply.
INLINE_BYTES = 64 << 10


class GradientAverager:
    """Averages a replicated trainer's gradients over its group once per optimizer step:
    when the trainer calls ``average_gradients()`` (before its clip), else in a hook just
    before ``optimizer.step()``."""

    def __init__(
        self, model: torch.nn.Module, group: dist.ProcessGroup, *, bucket_bytes: int
    ) -> None:
        self.model, self.group, self.bucket_bytes = model, group, bucket_bytes
        self.done = False

    def __call__(self) -> None:
        if self.done:
            return
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        all_reduce_mean(grads, group=self.group, bucket_bytes=self.bucket_bytes)
        self.done = True

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        optimizer.register_step_pre_hook(lambda *_: self())
        optimizer.register_step_post_hook(lambda *_: setattr(self, "done", False))


def run_setup(rt: WorkerRuntime, msg: Setup) -> None:
    rt.exchange.directory = msg.directory
    rt.bucket_bytes = msg.config.runtime.coalesced_buffer_bytes
    for spec in msg.groups:
        group = dist.new_group(spec.ranks, backend=spec.backend)
        if rt.env.rank in spec.ranks:
            rt.groups[spec.name] = group
    # The groups' gloo listeners, and the control channel's, opened after the rendezvous.
    admission.guard_peers(context.peers)
    for module in msg.modules:
        group_name = msg.replicated.get(module.name)
        replica_group = rt.groups[group_name] if group_name is not None else None
        module.bind(msg.config, replica_id=rt.env.replica, replica_group=replica_group)
        module.run_hook(module.setup)
        rt.modules[module.name] = module
    for name, group_name in msg.replicated.items():
        module = rt.modules[name]
        if sharding.is_sharded(module.model):
            continue  # started from replica 0's weights when sharded; FSDP averages
        group = rt.groups[group_name]
        ranks = dist.get_process_group_ranks(group)
        # Data-parallel replicas start from replica 0's weights, like DDP.
        params = list(module.named_parameters_to_sync().values())
        broadcast_tensors(params, src=min(ranks), group=group, bucket_bytes=rt.bucket_bytes)
        if module.optimizer is not None and module.model is not None:
            averager = GradientAverager(module.model, group, bucket_bytes=rt.bucket_bytes)
            averager.attach(module.optimizer)
            module.gradient_averager = averager


def run_param_specs(rt: WorkerRuntime, msg: ParamSpecs) -> list[tuple[str, tuple[int, ...], str]]:
    params = sync_parameters(rt.modules[msg.module])
    return [(k, tuple(v.shape), str(v.dtype)) for k, v in params.items()]


def run_build_dataset(rt: WorkerRuntime, msg: BuildDataset) -> list[Any]:
    module = rt.modules[msg.module]
    return list(module.run_hook(module.build_dataset, msg.prompts, msg.is_eval))


def run_call(rt: WorkerRuntime, msg: Call) -> CallDone:
    """Pull the inputs, run the call, store its output under ``msg.key``.

    Raises (and stores nothing) when an input's producer failed, the call raised, or
    its dict output does not split into samples.
    """
    module = rt.modules[msg.module]
    data = merge_inputs(f"{msg.module}.{msg.method}", [rt.exchange.resolve(i) for i in msg.inputs])
    start = time.perf_counter()
    out = module.call_hook(msg.method, data, msg.iteration)
    seconds = time.perf_counter() - start
    # Counted before it is stored: an output that is no batch (a scalar, sizes that
    # disagree) fails the call, and the exec loop stores that failure under the key instead.
    count = len(split_samples(out)) if isinstance(out, dict) else None
    rt.exchange.value(msg.key).set_result(out)
    return CallDone(count, seconds, pickled_if_small(out))


def run_hook(rt: WorkerRuntime, msg: Hook) -> None:
    for module in rt.modules.values():
        module.run_hook(getattr(module, msg.hook))


def run_metrics(rt: WorkerRuntime, msg: Metrics) -> dict[str, dict[str, float]]:
    names = rt.modules if msg.modules is None else [n for n in rt.modules if n in msg.modules]
    return {n: dict(rt.modules[n].get_and_clear_metrics() or {}) for n in names}


def run_copy(rt: WorkerRuntime, msg: CopyParams) -> int:
    return copy_parameters(rt.modules[msg.src], rt.modules[msg.dst])


def run_gather(rt: WorkerRuntime, msg: GatherParams) -> None:
    """Take part in gathering a sharded ``module``'s parameters whole, which another
    replica of it sends (a no-op when it is not sharded)."""
    sharding.full_tensors(list(sync_parameters(rt.modules[msg.module]).values()))


def run_broadcast(rt: WorkerRuntime, msg: BroadcastParams) -> int:
    module = rt.modules[msg.module]
    tensors = list(sync_parameters(module).values())
    sharded = sharding.is_sharded(module.model)
    return broadcast_tensors(
        sharding.full_tensors(tensors),  # the sender's shards gathered whole (collective)
        src=msg.src,
        group=rt.groups[msg.group],
        bucket_bytes=rt.bucket_bytes,
        wire=[getattr(torch, name.removeprefix("torch.")) for name in msg.wire],
        # The model's own parameters: the first sync packs them, later ones send in place.
        packing=not sharded
        and type(module).named_parameters_to_sync is BaseModule.named_parameters_to_sync,
    )


def run_save_hook(rt: WorkerRuntime, msg: SaveHook) -> None:
    for name, module in rt.modules.items():
        if msg.firsts[name] == rt.env.name:
            module.run_hook(module.save_checkpoint, msg.iteration)


def run_save_state(rt: WorkerRuntime, msg: SaveState) -> StateReply:
    """States of the modules whose first replica this is, and every module's RNG.

    A sharded module's state is gathered on all its replicas (collective), in
    the order of the modules' names on every worker, and kept by the first.
    """
    states = {}
    for name, module in sorted(rt.modules.items()):
        first = msg.firsts[name] == rt.env.name
        if first or sharding.is_sharded(module.model):
            state = module_checkpoint(module)
            if first:
                states[name] = state
    rng = {n: m.rng.state for n, m in rt.modules.items() if m.rng is not None}
    return StateReply(states, rng)


def run_load_state(rt: WorkerRuntime, msg: LoadState) -> None:
    for name, module in rt.modules.items():
        if name in msg.states:
            load_module_checkpoint(module, msg.states[name])
        if name in msg.rngs and module.rng is not None:
            module.rng.state = msg.rngs[name]


def run_free(rt: WorkerRuntime, msg: Free) -> None:
    rt.exchange.free(msg.keys)


HANDLERS: dict[type, Callable[[WorkerRuntime, Any], Any]] = {
    Setup: run_setup,
    ParamSpecs: run_param_specs,
    BuildDataset: run_build_dataset,
    Call: run_call,
    Hook: run_hook,
    Metrics: run_metrics,
    CopyParams: run_copy,
    GatherParams: run_gather,
    BroadcastParams: run_broadcast,
    SaveHook: run_save_hook,
    SaveState: run_save_state,
    LoadState: run_load_state,
    Free: run_free,
}


class _TooBig(Exception):
    pass


class _Capped(io.BytesIO):
    def write(self, data: Any) -> int:
        if self.tell() + len(data) > INLINE_BYTES:
            raise _TooBig
        return super().write(data)


def pickled_if_small(value: Any) -> bytes | None:
    """``value`` pickled when that takes at most ``INLINE_BYTES``, else None.

    Large tensors are refused before pickling; otherwise the pickler stops at
    the limit, so a large output costs at most that much work. An output
    that cannot be pickled is not inlined (the driver's fetch then reports it).
    """
    items = value.values() if isinstance(value, dict) else (value,)
    if any(isinstance(v, torch.Tensor) and v.nbytes > INLINE_BYTES for v in items):
        return None
    buffer = _Capped()
    try:
        Pickler(buffer).dump(value)
    except _TooBig:
        return None
    except Exception:  # unpicklable: the driver's fetch over RPC says so
        return None
    return buffer.getvalue()
