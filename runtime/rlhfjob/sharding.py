"""FSDP2 for trainer replicas (``args.fsdp``): shard, gather, save and load whole.

A trainer whose replicas are sharded keeps 1/N of every parameter, gradient
and AdamW moment on each replica (``torch.distributed.fsdp.fully_shard`` over
the replicas' process group); forward all-gathers each block's parameters and
backward reduce-scatters (averages) its gradients, so no gradient hook runs.
Everything that needs the whole model is collective over that group, and so
is called on every replica in the same order:

- ``full_tensors``: the parameters whole, for parameter sync (the executor sends
  the replicas that do not send a ``GatherParams``);
- ``full_state`` / ``load_full_state``: checkpoints hold whole tensors, as an
  unsharded trainer's, so a checkpoint loads whatever the replica count;
- ``common_steps``: FSDP's collectives need every replica to run as many
  forward/backward passes as the others.

Tested on CPU with gloo (``tests/runtime/test_sharding.py``, ``test_memory_distributed.py``);
NCCL on GPUs is the same code, not run here.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from rlhfjob.comm.broadcast import broadcast_tensors

__all__ = [
    "common_steps",
    "describe",
    "full_state",
    "full_tensors",
    "is_sharded",
    "load_full_state",
    "shard",
]


def _blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks: the children of the ModuleList holding most parameters
    (GPT's ``blocks``, Llama's ``model.layers``, GPT-2's ``transformer.h``); none when
    the model has no ModuleList."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if not lists:
        return []
    biggest = max(lists, key=lambda m: sum(p.numel() for p in m.parameters()))
    return list(biggest)


def shard(model: nn.Module, group: dist.ProcessGroup, *, bucket_bytes: int) -> None:
    """Start every replica from the group's first replica's weights, then shard ``model``
    in place: each transformer block is one FSDP unit (gathered only while it runs),
    the rest (embeddings, head, final norm) the root's."""
    ranks = dist.get_process_group_ranks(group)
    whole = [*model.parameters(), *model.buffers()]
    broadcast_tensors(whole, src=min(ranks), group=group, bucket_bytes=bucket_bytes)
    device = next(model.parameters()).device.type
    mesh = DeviceMesh.from_group(group, device)
    for block in _blocks(model):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)


def describe(model: nn.Module, *, name: str, group: dist.ProcessGroup) -> str:
    """One line for the worker's log: how much of ``model`` this replica holds."""
    local = sum(p.to_local().numel() for p in model.parameters() if isinstance(p, DTensor))
    total = sum(p.numel() for p in model.parameters())
    return (
        f"rlhfjob {name}: FSDP2 over {dist.get_world_size(group)} replicas; replica "
        f"{dist.get_rank(group)} holds {local:,} of {total:,} parameters"
    )


def is_sharded(model: nn.Module | None) -> bool:
    return model is not None and any(isinstance(p, DTensor) for p in model.parameters())


def _whole(value: Any) -> Any:
    return value.full_tensor() if isinstance(value, DTensor) else value


def full_tensors(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each DTensor gathered whole (collective, in list order); other tensors as they are."""
    return [_whole(t) for t in tensors]


@torch.no_grad()
def full_state(
    model: nn.Module, optimizer: torch.optim.Optimizer | None
) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """The model's and the optimizer's state dicts with every DTensor gathered whole.

    Collective: the state dicts' orders are those of the module tree and the
    optimizer's parameter list, the same on every replica.
    """
    model_state = {k: _whole(v).detach().clone() for k, v in model.state_dict().items()}
    if optimizer is None:
        return model_state, None
    saved = optimizer.state_dict()
    state = {
        index: {k: _whole(v).clone() for k, v in per_param.items()}
        for index, per_param in saved["state"].items()
    }
    return model_state, {**saved, "state": state}


def _like(value: Any, template: Any) -> Any:
    """``value`` (whole) as this replica's shard of ``template`` (a DTensor), no
    communication; anything else as it is."""
    if isinstance(template, DTensor) and isinstance(value, torch.Tensor):
        if tuple(value.shape) != tuple(template.shape):
            raise ValueError(
                f"a saved tensor of shape {tuple(value.shape)} cannot load into a parameter "
                f"of shape {tuple(template.shape)}: the checkpoint is of another model"
            )
        return distribute_tensor(
            value.to(template.dtype), template.device_mesh, template.placements, src_data_rank=None
        )
    return value


@torch.no_grad()
def load_full_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    *,
    model_state: dict[str, Any] | None,
    optimizer_state: dict[str, Any] | None,
) -> None:
    """Load whole state dicts (``full_state``'s, or an unsharded trainer's) into a sharded
    model and its optimizer: each replica keeps its own shard. Not collective."""
    if model_state is not None:
        current = model.state_dict()
        model.load_state_dict({k: _like(v, current.get(k)) for k, v in model_state.items()})
    if optimizer is None or optimizer_state is None:
        return
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = {
        index: {k: _like(v, params[index]) if k != "step" else v for k, v in per_param.items()}
        for index, per_param in optimizer_state["state"].items()
    }
    optimizer.load_state_dict({**optimizer_state, "state": state})


def common_steps(count: int, group: dist.ProcessGroup, *, name: str) -> int:
    """The most micro-batches any replica of a sharded trainer has this step (collective).

    Raises ValueError on every replica when one has none: its forward passes
    would be missing from every block's all-gather. (The executor refuses a global
    batch smaller than the replica count before it gets here: ``rpc.check_shares``.)
    """
    counts = torch.tensor([count, -count], dtype=torch.int64)
    dist.all_reduce(counts, op=dist.ReduceOp.MAX, group=group)
    most, fewest = int(counts[0]), -int(counts[1])
    if fewest == 0:
        raise ValueError(
            f"a replica of {name} (args.fsdp: true) got no micro-batch while another got "
            f"{most}: every replica of a sharded trainer takes part in every train step (the "
            "executor gives each a share of every global batch)"
        )
    return most
