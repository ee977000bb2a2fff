"""Where each module runs and which process groups the job needs: pure functions of the plan.

Nothing here starts a process or touches ``torch.distributed``; the driver
executor (``rlhfjob.executor.rpc``) makes the groups this computes, and every
worker makes the same ones in the same order (``new_group`` is collective).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from rlhfjob.comm.env import Peer
from rlhfjob_operator.spec import JobConfig

__all__ = ["GroupSpec", "Placement", "SyncRoute", "plan", "replicas_by_model", "replicas_of"]


@dataclasses.dataclass(frozen=True)
class GroupSpec:
    """A process group: its name, its global ranks (ascending) and its backend."""

    name: str
    ranks: list[int]
    backend: str


@dataclasses.dataclass(frozen=True)
class SyncRoute:
    """A parameter sync across processes: ``source`` (the trainer's first replica)
    broadcasts over ``group`` to every replica in ``targets``."""

    group: str
    source: Peer
    targets: list[Peer]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Placement:
    """The job's layout, as the driver computes it before any worker sets up.

    ``replicated`` maps a worker's name to the data-parallel group of each of
    its modules that trains on more than one replica (workers with none are
    absent). ``sync`` maps each (src, dst) pair to its route, or to None when
    every replica of dst lives in a process that holds src (a copy in place).
    """

    replicas: dict[str, list[Peer]]
    backend: str
    groups: list[GroupSpec]
    replicated: dict[str, dict[str, str]]
    sync: dict[tuple[str, str], SyncRoute | None]


def replicas_by_model(peers: Sequence[Peer]) -> dict[str, list[Peer]]:
    """Every model's replicas (the peers other than the driver, rank 0, that publish it),
    ordered by (rank, replica); models nobody publishes are absent."""
    replicas: dict[str, list[Peer]] = {}
    for peer in sorted((p for p in peers if p.rank != 0), key=lambda p: (p.rank, p.replica)):
        for model in peer.models:
            replicas.setdefault(model, []).append(peer)
    return replicas


def replicas_of(replicas: dict[str, list[Peer]], name: str) -> list[Peer]:
    """``replicas[name]``; ValueError saying what to add to the spec when it has none."""
    peers = replicas.get(name)
    if not peers:
        raise ValueError(
            f"model {name!r} has no worker: add models.{name} to the job spec "
            "so the launcher starts one"
        )
    return peers


def plan(
    config: JobConfig,
    peers: Sequence[Peer],
    *,
    modules: Sequence[str],
    sync_pairs: Sequence[tuple[str, str]] = (),
) -> Placement:
    """The placement of ``modules`` (names, in the flows' order) on ``peers``.

    ValueError when a module has no worker, or when a worker serves a model
    that no module uses. The backend is nccl when every worker has CUDA, else
    gloo (the driver, rank 0, joins every group but computes nothing). A
    trainable module with several replicas gets the group ``dp/<name>``; a sync
    pair whose dst replicas are not all colocated with src gets
    ``sync/<src>/<dst>``, src's first replica and every dst replica. Both ends
    of each sync pair must be among ``modules``.
    """
    replicas = replicas_by_model(peers)
    for name in modules:
        replicas_of(replicas, name)
    unused = sorted(set(replicas) - set(modules))
    if unused:
        raise ValueError(
            f"the job spec starts workers for models {unused}, which no flow uses; remove "
            "them from spec.models or use them"
        )
    workers = [p for p in peers if p.rank != 0]
    backend = "nccl" if all(p.cuda for p in workers) else "gloo"
    groups: list[GroupSpec] = []
    replicated: dict[str, dict[str, str]] = {}
    for name in modules:
        if config.model(name).trainable and len(replicas[name]) > 1:
            group = f"dp/{name}"
            groups.append(GroupSpec(group, [p.rank for p in replicas[name]], backend))
            for p in replicas[name]:
                replicated.setdefault(p.name, {})[name] = group
    sync: dict[tuple[str, str], SyncRoute | None] = {}
    for src, dst in sync_pairs:
        s, d = replicas[src], replicas[dst]
        if {p.name for p in d} <= {p.name for p in s}:
            sync[(src, dst)] = None
            continue
        group = f"sync/{src}/{dst}"
        groups.append(GroupSpec(group, sorted({s[0].rank, *(p.rank for p in d)}), backend))
        sync[(src, dst)] = SyncRoute(group, s[0], list(d))
    return Placement(
        replicas=replicas, backend=backend, groups=groups, replicated=replicated, sync=sync
    )
