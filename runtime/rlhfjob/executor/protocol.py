"""What crosses the data plane's wire: one frozen message type per operation.

The driver submits an ``Operation`` to a worker wrapped in ``Submit`` (its
sequence number); the worker runs it by looking its type up in
``rlhfjob.executor.operations.HANDLERS``. Workers pull stored values from
each other with ``Layout`` and ``Fill`` (control channel, shared memory) or
``Fetch`` (torch RPC). Replies that carry more than one value are frozen
dataclasses too (``CallDone``, ``StateReply``, ``LayoutReply``).

Both ends run the same code, so these types may change freely between
releases; they are never persisted. Operations whose fields carry weights
(``via_rpc``) take torch RPC, which moves tensors without pickling them;
every other one takes the control channel.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from rlhfjob.comm.shm import Big
    from rlhfjob.executor.placement import GroupSpec
    from rlhfjob.module import BaseModule
    from rlhfjob_operator.spec import JobConfig

__all__ = [
    "BroadcastParams",
    "BuildDataset",
    "Call",
    "CallDone",
    "CopyParams",
    "Directory",
    "Endpoint",
    "Failure",
    "Fetch",
    "Fill",
    "Free",
    "GatherParams",
    "Hook",
    "Joined",
    "Layout",
    "LayoutReply",
    "LoadState",
    "Metrics",
    "Operation",
    "ParamSpecs",
    "Ref",
    "Row",
    "SaveHook",
    "SaveState",
    "Setup",
    "StateReply",
    "Submit",
    "lost_peer",
]


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


@dataclasses.dataclass(frozen=True)
class Joined:
    """One sample of an env flow that returns several outputs: its Row in each output,
    merged in that order when pulled (a later output's key wins)."""

    parts: tuple[Row, ...]


@dataclasses.dataclass(frozen=True)
class Failure:
    """A failed operation, returned as a value: RPC carries it intact to every waiter.

    Calls that consumed a failed output fail with the same text, so whoever
    waits first sees the original worker and traceback. ``retryable``: the
    operation failed because a peer of a collective was lost (``lost_peer``), so a
    restart of the gang can help; otherwise the code raised and would again.
    """

    message: str
    retryable: bool = False


# What gloo's TCP transport raises (as a plain RuntimeError) when the other end of a
# collective died: the sync's or a gradient all-reduce's peer was killed.
_LOST = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")


def lost_peer(exc: BaseException) -> bool:
    """Whether ``exc`` says a collective's peer process is gone (not a bug of the code)."""
    import torch.distributed as dist

    if isinstance(exc, dist.DistNetworkError):
        return True
    return isinstance(exc, RuntimeError) and any(text in str(exc) for text in _LOST)


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """Where a worker's control server listens, and who shares its /dev/shm
    (``rlhfjob.comm.shm.domain``; "" when it has none usable: it pulls by torch RPC)."""

    address: tuple[str, int]
    domain: str


# Every worker's endpoint by worker name.
Directory = dict[str, Endpoint]


# --- operations: driver -> worker, run in submission order ---------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class Setup:
    """Make the process groups, bind and set up ``modules``, start replicas from replica 0.

    ``replicated`` names, per module of this worker that trains data parallel,
    the group its gradients are averaged over (or, with ``args.fsdp``, sharded over).
    """

    op: ClassVar[str] = "setup"
    via_rpc: ClassVar[bool] = True
    modules: list[BaseModule]
    config: JobConfig
    groups: list[GroupSpec]
    replicated: dict[str, str]
    directory: Directory


@dataclasses.dataclass(frozen=True, kw_only=True)
class ParamSpecs:
    """(name, shape, dtype) of every parameter ``module`` syncs, sorted by name."""

    op: ClassVar[str] = "param_specs"
    via_rpc: ClassVar[bool] = False
    module: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class BuildDataset:
    op: ClassVar[str] = "build_dataset"
    via_rpc: ClassVar[bool] = False
    module: str
    prompts: list[Any]
    is_eval: bool


@dataclasses.dataclass(frozen=True, kw_only=True)
class Call:
    """Run ``module.method`` on ``inputs`` (values, Refs, TrainBatches of Rows); the
    output is stored under ``key`` until a ``Free`` names it."""

    op: ClassVar[str] = "call"
    via_rpc: ClassVar[bool] = False
    module: str
    method: str
    inputs: list[Any]
    iteration: int | None
    key: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class Hook:
    """Run the no-argument hook ``hook`` on every module of the worker."""

    op: ClassVar[str] = "hook"
    via_rpc: ClassVar[bool] = False
    hook: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class Metrics:
    """The metrics of ``modules`` (every module of the worker when None) since the last
    ask, cleared."""

    op: ClassVar[str] = "metrics"
    via_rpc: ClassVar[bool] = False
    modules: tuple[str, ...] | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class CopyParams:
    """Copy ``src``'s parameters into ``dst``, both on this worker; replies the bytes."""

    op: ClassVar[str] = "copy"
    via_rpc: ClassVar[bool] = False
    src: str
    dst: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class GatherParams:
    """Take part in gathering ``module``'s sharded parameters whole while another replica
    of it sends them (FSDP2's gathers are collective over its replicas)."""

    op: ClassVar[str] = "gather"
    via_rpc: ClassVar[bool] = False
    module: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class BroadcastParams:
    """Broadcast ``module``'s parameters over ``group`` from global rank ``src`` (sending
    or receiving); replies the bytes one rank received. ``wire``: the sender's dtypes
    (``str(torch.dtype)``), by sorted parameter name, which a receiver casts from."""

    op: ClassVar[str] = "broadcast"
    via_rpc: ClassVar[bool] = False
    module: str
    group: str
    src: int
    wire: tuple[str, ...]


@dataclasses.dataclass(frozen=True, kw_only=True)
class SaveHook:
    """Call ``save_checkpoint(iteration)`` on each module whose first replica
    (``firsts``) is this worker."""

    op: ClassVar[str] = "save_hook"
    via_rpc: ClassVar[bool] = False
    iteration: int
    firsts: dict[str, str]


@dataclasses.dataclass(frozen=True, kw_only=True)
class SaveState:
    """The checkpoint state of each module whose first replica (``firsts``) is this
    worker, and every module's RNG state."""

    op: ClassVar[str] = "state"
    via_rpc: ClassVar[bool] = True
    firsts: dict[str, str]


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoadState:
    """Load ``states`` and ``rngs`` (by module name) into the modules present here."""

    op: ClassVar[str] = "load"
    via_rpc: ClassVar[bool] = True
    states: dict[str, dict[str, Any]]
    rngs: dict[str, Any]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Free:
    """Drop the stored values ``keys`` (keys not stored are ignored)."""

    op: ClassVar[str] = "free"
    via_rpc: ClassVar[bool] = False
    keys: list[int]


Operation = (
    Setup
    | ParamSpecs
    | BuildDataset
    | Call
    | Hook
    | Metrics
    | CopyParams
    | GatherParams
    | BroadcastParams
    | SaveHook
    | SaveState
    | LoadState
    | Free
)


@dataclasses.dataclass(frozen=True)
class Submit:
    """Operation number ``seq`` of the driver's order for this worker."""

    seq: int
    operation: Operation


# --- replies ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CallDone:
    """A finished ``Call``: its output's sample count (None when not a dict), the seconds
    it ran once its inputs were in, and the output pickled when small (else None)."""

    count: int | None
    seconds: float
    inline: bytes | None


@dataclasses.dataclass(frozen=True)
class StateReply:
    states: dict[str, dict[str, Any]]
    rng: dict[str, Any]


# --- pulls: worker -> producer ---------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Fetch:
    """Rows ``indices`` (all when None) of the value stored under ``key``, by torch RPC."""

    key: int
    indices: list[int] | None


@dataclasses.dataclass(frozen=True)
class Layout:
    """The shape of value ``key`` (rows ``indices``): small parts, and a marker per large
    tensor the consumer must provide shared memory for."""

    key: int
    indices: list[int] | None


@dataclasses.dataclass(frozen=True)
class LayoutReply:
    """``skeleton`` is a Failure (and ``markers`` empty) when the call that should have
    made the value failed."""

    skeleton: Any
    markers: list[Big]


@dataclasses.dataclass(frozen=True)
class Fill:
    """Write value ``key``'s large tensors into the consumer's slots ``targets`` ((name,
    size) each, in marker order); first forget the slots in ``dropped``."""

    key: int
    indices: list[int] | None
    targets: list[tuple[str, int]]
    dropped: list[str]
