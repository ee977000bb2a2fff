"""Meet the gang: one signed TCPStore rendezvous, then gloo and torch RPC over it.

Every process (driver rank 0, model workers 1..N) meets the others at one
TCPStore served by the driver on ``MASTER_ADDR:MASTER_PORT``, publishes its
signed :class:`~rlhfjob.comm.env.Peer` record, waits for every rank's
verified record, then starts a gloo default process group and torch RPC
(TensorPipe: cross-memory attach for tensors between processes of one host,
TCP across hosts), both rendezvousing through the same signed store.
:func:`start` returns the :class:`Session` that owns all of it until
:meth:`Session.stop`.

Startup waits at most ``startup_timeout`` seconds for peers, then fails
naming the ranks that never came. What the job-secret checks refuse, and
why the exit is retryable, is in :mod:`rlhfjob.comm.signing`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.rpc as rpc
from torch.distributed.rendezvous import register_rendezvous_handler

from rlhfjob import timing
from rlhfjob.comm import admission
from rlhfjob.comm.env import MIN_SECRET_CHARS, Peer, WorkerEnv
from rlhfjob.comm.errors import RendezvousRefused, StartupError
from rlhfjob.comm.quiet import quiet_startup
from rlhfjob.comm.rpc_pickles import sign_rpc_pickles
from rlhfjob.comm.signing import NONCE_BYTES, TAG_BYTES, SignedStore, job_key
from rlhfjob_operator.contract import ENV_JOB_SECRET

__all__ = ["Session", "start"]


@dataclasses.dataclass(eq=False, kw_only=True)
class Session:
    """One process's membership of the gang, from :func:`start` to :meth:`stop`.

    ``peers`` is every process by rank. ``stopped`` is set by :meth:`stop`; the
    heartbeat (``rlhfjob.comm.heartbeat.watch``) ends with it. The session
    holds the stores because the C++ side of gloo and RPC holds them by
    reference only: dropping the last Python reference would free them under it.
    """

    env: WorkerEnv
    peers: list[Peer]
    store: SignedStore
    tcp: dist.TCPStore
    undo_signing: Callable[[], None]
    stopped: threading.Event = dataclasses.field(default_factory=threading.Event)

    def stop(self, *, graceful: bool) -> None:
        """Shut RPC and the process group down; ``graceful`` waits for every peer to finish.

        Heartbeats go on during a graceful shutdown (it waits for the driver to
        finish) and end once it returns. A second call does nothing.
        """
        if self.stopped.is_set():
            return
        try:
            rpc.shutdown(graceful=graceful)
        finally:
            self.stopped.set()
            if dist.is_initialized():
                dist.destroy_process_group()
            self.undo_signing()


def _record(env: WorkerEnv) -> bytes:
    me = Peer(
        rank=env.rank,
        name=env.name,
        role=env.role,
        replica=env.replica,
        models=env.models,
        pid=os.getpid(),
        host=os.uname().nodename,
        cuda=torch.cuda.is_available(),
        addresses=admission.host_addresses(),
    )
    return json.dumps(dataclasses.asdict(me)).encode()


def _claim(raw: bytes) -> str:
    """What a refused record says it is, for the message; JSON at most, never a pickle."""
    for body in (raw[TAG_BYTES + NONCE_BYTES :], raw):
        try:
            claim = json.loads(body[:4096])
        except ValueError:
            continue
        if isinstance(claim, dict) and {"name", "pid", "host"} <= claim.keys():
            return (
                f"claiming to be {str(claim['name'])[:64]}, pid {str(claim['pid'])[:16]} on "
                f"{str(claim['host'])[:64]}"
            )
    return f"{len(raw)} bytes that are no rlhfjob peer record"


def _gather_peers(store: SignedStore, env: WorkerEnv, *, deadline: float) -> list[Peer]:
    """Every rank's verified record; unverifiable ones are refused and waited past."""
    mine = _record(env)
    where = f"{env.master_addr}:{env.master_port}"
    found: dict[int, Peer] = {}
    refused: dict[int, str] = {}
    republish = time.monotonic() + 1.0
    while True:
        for rank in range(env.world_size):
            if rank in found:
                continue
            key = f"peer/{rank}"
            raw = store.raw(key)
            if raw is None:
                continue
            payload = store.open(key, raw)
            if payload is None:
                claim = _claim(raw)
                if rank == 0 and not env.is_driver:
                    raise RendezvousRefused(
                        f"the driver's record at the rendezvous {where} ({claim}) "
                        f"is not signed with this process's {ENV_JOB_SECRET}: this process was "
                        "not started with this gang's secret (or belongs to an earlier gang), "
                        "or that address is another job's rendezvous; not joining"
                    )
                if refused.get(rank) != claim:
                    refused[rank] = claim
                    print(
                        f"rlhfjob {env.name}: refused a rendezvous record for rank {rank} "
                        f"({claim}): it is not signed with this job's secret; waiting for the "
                        "rank's own",
                        file=sys.stderr,
                        flush=True,
                    )
                continue
            raw_peer = json.loads(payload)
            raw_peer["models"] = tuple(raw_peer["models"])
            raw_peer["addresses"] = tuple(raw_peer.get("addresses", ()))
            found[rank] = Peer(**raw_peer)
        if len(found) == env.world_size:
            return [found[r] for r in range(env.world_size)]
        now = time.monotonic()
        if now > deadline:
            missing = sorted(set(range(env.world_size)) - set(found))
            message = (
                f"job {env.job_name}: ranks {missing} of {env.world_size} did not reach the "
                f"rendezvous at {where} in time; check that their processes or pods started "
                "and can reach the driver"
            )
            strangers = {r: c for r, c in refused.items() if r in missing}
            if strangers:
                named = "; ".join(f"rank {r}: {c}" for r, c in sorted(strangers.items()))
                raise RendezvousRefused(
                    f"{message}. Refused records not signed with this job's secret: {named}"
                )
            raise StartupError(message)
        if now > republish:
            # Heals a record a stranger overwrote after this process wrote it.
            store.set(f"peer/{env.rank}", mine)
            republish = now + 1.0
        time.sleep(0.05)


def _listen_fd(env: WorkerEnv) -> int | None:
    """A listening socket on loopback for the driver's store when MASTER_ADDR is a loopback
    address (TCPStore itself listens on every interface); None: let TCPStore listen
    everywhere. No name is looked up: a pod's MASTER_ADDR may not resolve yet."""
    host = "127.0.0.1" if env.master_addr == "localhost" else env.master_addr
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if not address.is_loopback:
        return None
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((str(address), env.master_port))
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    return sock.detach()  # TCPStore owns it from here


def rpc_channels(peers: list[Peer], *, cuda: bool) -> list[str]:
    """TensorPipe's channels for this gang, best first; pure.

    Tensor payloads between processes of one host take cross-memory attach (CMA: one
    process_vm_readv, no socket), CUDA IPC on GPUs. Control messages take TCP ("uv"),
    not TensorPipe's "shm" transport: its reactor busy-polls a core per process, which
    made the PPO example 7x slower with 7 processes on 2 cores (3.05 s vs 0.44 s).

    ``mpt_uv`` (tensors over 16 parallel TCP lanes, each a listening socket of its
    own) is offered only when some peer is on another host: on one host ``cma``
    carries every tensor, so its 16 listeners per process would be doors to the
    process that nothing of the job uses (SECURITY.md). "Another host" means another
    ``Peer.host`` (the hostname; on Kubernetes each pod's own, so pods of one node
    count as several hosts: CMA does not cross their PID namespaces anyway).
    """
    channels = ["cma", "basic"]
    if len({peer.host for peer in peers}) > 1:
        channels.insert(1, "mpt_uv")
    if cuda:
        channels = ["cuda_ipc", "cuda_basic", *channels]
    return channels


def _start_gloo_and_rpc(
    env: WorkerEnv, store: SignedStore, peers: list[Peer], *, startup_timeout: float
) -> None:
    """The default gloo group and torch RPC, both rendezvousing through ``store``."""

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
    timing.mark("gloo process group up")
    channels = rpc_channels(peers, cuda=torch.cuda.is_available())
    options = rpc.TensorPipeRpcBackendOptions(
        init_method="rlhfjob://",
        # Also the store's timeout during RPC's own handshake, so not 0 here.
        rpc_timeout=startup_timeout,
        num_worker_threads=32,
        # Underscored, but the only way to choose them (guarded by test_torch_private_api).
        _transports=["uv"],
        _channels=channels,
    )
    rpc.init_rpc(env.name, rank=env.rank, world_size=env.world_size, rpc_backend_options=options)


def start(env: WorkerEnv, *, startup_timeout: float = 120.0, rpc_timeout: float = 0) -> Session:
    """Meet the other processes, start RPC and gloo; returns the :class:`Session`.

    Raises StartupError naming the missing ranks after ``startup_timeout``, or
    naming what failed while gloo or RPC started; RendezvousRefused (a
    StartupError) when a value at the rendezvous is not signed with the job's
    secret (see the module doc). ``rpc_timeout`` 0 means calls have no
    deadline: a dead peer is found by the heartbeat and by broken connections,
    never by waiting out a timer.
    """
    if len(env.secret) < MIN_SECRET_CHARS:
        raise ValueError(f"{ENV_JOB_SECRET} is missing or shorter than {MIN_SECRET_CHARS}")
    deadline = time.monotonic() + startup_timeout
    try:
        listen_fd = _listen_fd(env) if env.is_driver else None
        tcp = dist.TCPStore(
            env.master_addr,
            env.master_port,
            env.world_size,
            is_master=env.is_driver,
            timeout=timedelta(seconds=startup_timeout),
            wait_for_workers=False,
            master_listen_fd=listen_fd,
        )
    except (OSError, RuntimeError, dist.DistStoreError) as exc:
        raise StartupError(
            f"{env.name} could not reach the driver's rendezvous at "
            f"{env.master_addr}:{env.master_port} within {startup_timeout:.0f}s: {exc}"
        ) from exc
    store = SignedStore(tcp, job_key(env, "rendezvous"), patience=startup_timeout, name=env.name)
    # On failure the stores die with their last reference here: a driver's listener closes.
    store.set(f"peer/{env.rank}", _record(env))
    peers = _gather_peers(store, env, deadline=deadline)
    timing.mark("met every peer at the rendezvous")

    undo = sign_rpc_pickles(job_key(env, "rpc"), name=env.name)
    try:
        with quiet_startup(env.log_level):
            _start_gloo_and_rpc(env, store, peers, startup_timeout=startup_timeout)
    except Exception as exc:
        undo()
        if store.refused:
            raise RendezvousRefused(
                f"starting gloo and RPC stopped: refused {store.refused[0]}: it is "
                f"not signed with this job's secret ({ENV_JOB_SECRET})"
            ) from exc
        raise StartupError(
            f"starting gloo and RPC with the other {env.world_size - 1} processes "
            f"failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc
    # No public setter: the options' rpc_timeout also bounds RPC's own startup, which must
    # not wait forever (tests/unit/test_torch_private_api.py guards this name).
    rpc._set_rpc_timeout(rpc_timeout)
    guarded = admission.guard_peers(peers)
    timing.mark(f"{len(guarded)} listening sockets admit only the gang's addresses")
    return Session(env=env, peers=peers, store=store, tcp=tcp, undo_signing=undo)
