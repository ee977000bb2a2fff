"""One validated bootstrap for every process of a job: env contract, rendezvous, RPC, gloo.

Every process (driver rank 0, model workers 1..N) reads the environment
contract of ``rlhfjob_operator.plan``, meets the others at one TCPStore served
by the driver on ``MASTER_ADDR:MASTER_PORT``, then starts torch RPC
(TensorPipe: cross-memory attach for tensors between processes of one host,
TCP across hosts) and a gloo default process group, both over that one store.

Startup waits at most ``startup_timeout`` seconds for peers, then fails
naming the ranks that never came. Afterwards a heartbeat thread in every
process watches the store: a worker whose driver is gone exits with
``EXIT_RETRYABLE``; the driver names any worker whose heartbeat stopped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.rpc as rpc
from torch.distributed.rendezvous import register_rendezvous_handler

from rlhfjob_operator.plan import (
    DRIVER_ROLE,
    ENV_CHECKPOINT_DIR,
    ENV_JOB_NAME,
    ENV_METRICS_PORT,
    ENV_MODELS,
    ENV_REPLICA,
    ENV_RESTART_GENERATION,
    ENV_ROLE,
    ENV_SPEC,
    EXIT_PERMANENT,
)

__all__ = ["EXIT_PERMANENT", "EXIT_RETRYABLE", "Peer", "WorkerEnv", "start", "stop"]

# A peer died or never came: restarting the gang can fix it (EX_TEMPFAIL).
EXIT_RETRYABLE = 75
_HEARTBEAT_S = 1.0
# Generous: a loaded machine can stall a process for seconds; real deaths are seen sooner
# by broken RPC connections and by the launcher.
_STALE_S = 30.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class WorkerEnv:
    """The environment contract of one process, validated."""

    job_name: str
    role: str
    models: tuple[str, ...]
    replica: int
    rank: int
    world_size: int
    master_addr: str
    master_port: int
    spec_path: str
    checkpoint_dir: str
    metrics_port: int
    restart_generation: int

    @property
    def is_driver(self) -> bool:
        return self.role == DRIVER_ROLE

    @property
    def name(self) -> str:
        """The RPC name: ``driver`` or ``<role>-<replica>``."""
        return DRIVER_ROLE if self.is_driver else f"{self.role}-{self.replica}"

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> WorkerEnv:
        """Read the contract; a missing or malformed variable is a ValueError naming it."""
        env = os.environ if environ is None else environ

        def need(key: str) -> str:
            value = env.get(key)
            if value is None or (value == "" and key not in (ENV_MODELS,)):
                raise ValueError(
                    f"environment variable {key} is not set; rlhfjob workers are started by "
                    "`rlhfjob run job.yaml` or by the operator, which set the whole contract"
                )
            return value

        def number(key: str) -> int:
            raw = need(key)
            try:
                return int(raw)
            except ValueError:
                raise ValueError(f"environment variable {key}={raw!r} is not an integer") from None

        rank, world = number("RANK"), number("WORLD_SIZE")
        if not 0 <= rank < world:
            raise ValueError(f"RANK={rank} is outside 0..WORLD_SIZE-1 (WORLD_SIZE={world})")
        models = tuple(m for m in env.get(ENV_MODELS, "").split(",") if m)
        role = need(ENV_ROLE)
        if (role == DRIVER_ROLE) != (rank == 0):
            raise ValueError(
                f"{ENV_ROLE}={role} with RANK={rank}: the driver and only it is rank 0"
            )
        if role != DRIVER_ROLE and not models:
            raise ValueError(f"{ENV_MODELS} is empty for worker {role}; it names the models hosted")
        return cls(
            job_name=need(ENV_JOB_NAME),
            role=role,
            models=models,
            replica=number(ENV_REPLICA),
            rank=rank,
            world_size=world,
            master_addr=need("MASTER_ADDR"),
            master_port=number("MASTER_PORT"),
            spec_path=need(ENV_SPEC),
            checkpoint_dir=env.get(ENV_CHECKPOINT_DIR, ""),
            metrics_port=int(env.get(ENV_METRICS_PORT) or 0),
            restart_generation=int(env.get(ENV_RESTART_GENERATION) or 0),
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class Peer:
    """What every process publishes at rendezvous; the driver places modules by it."""

    rank: int
    name: str
    role: str
    replica: int
    models: tuple[str, ...]
    pid: int
    host: str
    cuda: bool

    def describe(self) -> str:
        return (
            f"{self.name} (role {self.role}, replica {self.replica}, pid {self.pid} on {self.host})"
        )


class StartupError(RuntimeError):
    """Peers did not meet in time; retryable."""


_state: dict[str, Any] = {}


def _publish(store: dist.Store, env: WorkerEnv) -> None:
    me = Peer(
        rank=env.rank,
        name=env.name,
        role=env.role,
        replica=env.replica,
        models=env.models,
        pid=os.getpid(),
        host=os.uname().nodename,
        cuda=torch.cuda.is_available(),
    )
    store.set(f"peer/{env.rank}", json.dumps(dataclasses.asdict(me)))


def _gather_peers(store: dist.Store, env: WorkerEnv, *, deadline: float) -> list[Peer]:
    keys = [f"peer/{r}" for r in range(env.world_size)]
    while True:
        present = [k for k in keys if store.check([k])]
        if len(present) == len(keys):
            break
        if time.monotonic() > deadline:
            missing = sorted(set(range(env.world_size)) - {int(k.split("/")[1]) for k in present})
            raise StartupError(
                f"job {env.job_name}: ranks {missing} of {env.world_size} did not reach the "
                f"rendezvous at {env.master_addr}:{env.master_port} in time; check that their "
                "processes or pods started and can reach the driver"
            )
        time.sleep(0.05)
    peers = []
    for key in keys:
        raw = json.loads(store.get(key))
        raw["models"] = tuple(raw["models"])
        peers.append(Peer(**raw))
    return peers


def start(env: WorkerEnv, *, startup_timeout: float = 120.0, rpc_timeout: float = 0) -> list[Peer]:
    """Meet the other processes, start RPC and gloo; returns every peer, by rank.

    Raises StartupError naming the missing ranks after ``startup_timeout``.
    ``rpc_timeout`` 0 means calls have no deadline: a dead peer is found by the
    heartbeat and by broken connections, never by waiting out a timer.
    """
    deadline = time.monotonic() + startup_timeout
    try:
        store = dist.TCPStore(
            env.master_addr,
            env.master_port,
            env.world_size,
            is_master=env.is_driver,
            timeout=timedelta(seconds=startup_timeout),
            wait_for_workers=False,
        )
    except (RuntimeError, dist.DistStoreError) as exc:
        raise StartupError(
            f"{env.name} could not reach the driver's rendezvous at "
            f"{env.master_addr}:{env.master_port} within {startup_timeout:.0f}s: {exc}"
        ) from exc
    _publish(store, env)
    peers = _gather_peers(store, env, deadline=deadline)

    def handler(url: str, **kwargs: Any) -> Iterator[tuple[dist.Store, int, int]]:
        del url, kwargs
        yield dist.PrefixStore("rpc", store), env.rank, env.world_size

    register_rendezvous_handler("rlhfjob", handler)
    dist.init_process_group(
        "gloo",
        store=dist.PrefixStore("pg", store),
        rank=env.rank,
        world_size=env.world_size,
        timeout=timedelta(seconds=max(startup_timeout, 600)),
    )
    # Tensor payloads between processes of one host take cross-memory attach (CMA: one
    # process_vm_readv, no socket), CUDA IPC on GPUs. Control messages take TCP ("uv"), not
    # TensorPipe's "shm" transport: its reactor busy-polls a core per process, which made the
    # PPO example 7x slower with 7 processes on 2 cores (3.05 s vs 0.44 s an episode).
    channels = ["cma", "mpt_uv", "basic"]
    if torch.cuda.is_available():
        channels = ["cuda_ipc", "cuda_basic", *channels]
    options = rpc.TensorPipeRpcBackendOptions(
        init_method="rlhfjob://",
        # Also the store's timeout during RPC's own handshake, so not 0 here.
        rpc_timeout=startup_timeout,
        num_worker_threads=32,
        _transports=["uv"],
        _channels=channels,
    )
    rpc.init_rpc(env.name, rank=env.rank, world_size=env.world_size, rpc_backend_options=options)
    rpc._set_rpc_timeout(rpc_timeout)
    _state.update(store=store, env=env, peers=peers, stop=threading.Event())
    return peers


def watch(on_lost: Callable[[str], None]) -> None:
    """Start the heartbeat thread; ``on_lost(message)`` is called once when a peer is lost.

    Workers publish a heartbeat and check the driver's store; the driver also
    checks every worker's heartbeat age.
    """
    env: WorkerEnv = _state["env"]
    peers: list[Peer] = _state["peers"]
    stop: threading.Event = _state["stop"]
    # A client of its own: one store client is not safe to share between threads.
    client = dist.TCPStore(
        env.master_addr, env.master_port, is_master=False, timeout=timedelta(seconds=5)
    )

    # Beats are counters, compared with the driver's own clock: hosts' clocks may disagree.
    seen: dict[int, tuple[bytes, float]] = {}

    def loop() -> None:
        beat = 0
        while not stop.wait(_HEARTBEAT_S):
            try:
                beat += 1
                client.set(f"hb/{env.rank}", str(beat))
                if env.is_driver:
                    now = time.monotonic()
                    for peer in peers[1:]:
                        key = f"hb/{peer.rank}"
                        value = client.get(key) if client.check([key]) else b""
                        last = seen.get(peer.rank)
                        if last is None or last[0] != value:
                            seen[peer.rank] = (value, now)
                        elif now - last[1] > _STALE_S:
                            on_lost(
                                f"worker {peer.describe()} stopped answering (no heartbeat "
                                f"for {_STALE_S:.0f}s)"
                            )
                            return
            except Exception as exc:  # the store lives in the driver: it is gone
                if stop.wait(1.0):  # ...because the job just ended normally
                    return
                on_lost(
                    f"the driver's rendezvous at {env.master_addr}:{env.master_port} is gone "
                    f"({type(exc).__name__}); the driver died or the job is being torn down"
                )
                return

    threading.Thread(target=loop, name="rlhfjob-heartbeat", daemon=True).start()


def stop(*, graceful: bool) -> None:
    """Shut RPC and the process group down; ``graceful`` waits for every peer to finish."""
    event = _state.get("stop")
    try:
        # Heartbeats go on during a graceful shutdown: it waits for the driver to finish.
        rpc.shutdown(graceful=graceful)
    finally:
        if event is not None:
            event.set()
        if dist.is_initialized():
            dist.destroy_process_group()
        _state.clear()


def fail_fast(message: str, *, code: int) -> None:
    """Print ``message`` and end the process now: a lost peer leaves nothing to save."""
    print(f"rlhfjob: {message}", file=sys.stderr, flush=True)
    os._exit(code)
