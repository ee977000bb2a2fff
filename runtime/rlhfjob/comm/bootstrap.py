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

Authentication. torch RPC unpickles what it receives, and neither the
TCPStore nor TensorPipe nor gloo asks who is talking, so every process holds
the job's secret (``RLHFJOB_JOB_SECRET``; a process without one refuses to
start, naming the variable) and:

- signs every value it puts into the rendezvous and verifies every value it
  reads (:class:`SignedStore`, under the peer records and under torch's own
  gloo and RPC rendezvous, counters and compare-and-set included), so a
  process without the secret cannot join, be placed, or slip its address in
  where gloo or TensorPipe would connect to it; nobody starts gloo or RPC
  until every rank's record verified;
- signs every pickle that torch RPC sends and checks the signature before
  unpickling anything it receives (:func:`sign_rpc_pickles`), so bytes sent
  to a worker's TensorPipe port by a stranger are refused unopened.

Keys are derived per job and per restart generation (:func:`job_key`): a
value or message of another job or of an earlier gang never verifies. A
record that fails the check is refused with a message naming the rank and
what it claims to be; the driver keeps waiting for the rank's real record
(every process republishes its own each second), a worker that cannot verify
the driver's record stops at once. Either way the exit is ``EXIT_RETRYABLE``:
the cause (a process of another job or an earlier gang, or an intruder) is
outside the spec, and a restart makes a new rendezvous; the backoff limit
bounds it. A missing or short secret is ``EXIT_PERMANENT``: the launcher's
configuration, which a restart repeats.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
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
from torch.distributed.rpc import internal as rpc_internal

from rlhfjob.comm.env import MIN_SECRET_CHARS, Peer, WorkerEnv
from rlhfjob_operator.contract import ENV_JOB_SECRET

__all__ = [
    "RendezvousRefused",
    "SignedStore",
    "StartupError",
    "job_key",
    "sign_rpc_pickles",
    "start",
    "stop",
]

_HEARTBEAT_S = 1.0
# Generous: a loaded machine can stall a process for seconds; real deaths are seen sooner
# by broken RPC connections and by the launcher.
_STALE_S = 30.0


class StartupError(RuntimeError):
    """Peers did not meet in time, or could not start gloo or RPC together; retryable."""


class RendezvousRefused(StartupError):
    """A rendezvous value failed the job-secret check; retryable (see the module doc)."""


def job_key(env: WorkerEnv, purpose: str) -> bytes:
    """A key for one use (``rendezvous``, ``rpc``, ...) derived from the job's secret.

    Bound to the job's name and restart generation: what an earlier gang of the
    same job (same Secret on Kubernetes) signed does not verify in this one.
    """
    info = f"rlhfjob/v1/{purpose}\0{env.job_name}\0{env.restart_generation}".encode()
    return hmac.new(env.secret.encode(), info, hashlib.sha256).digest()


_TAG = 32  # HMAC-SHA256
_NONCE = 16


class SignedStore(dist.Store):
    """A c10d Store over ``inner`` whose values are all signed with ``key``.

    A stored value is ``HMAC(key, key name, nonce, payload) || nonce || payload``.
    The nonce makes every write unique, so compare-and-set on the sealed bytes
    is exact: ``add`` (a counter is a signed decimal) and ``compare_set`` are
    loops over the inner store's atomic compare-and-set, with TCPStore's own
    semantics (a missing key matches an empty expected value). ``check``,
    ``wait`` and ``delete_key`` look at presence only: presence proves nothing,
    the value is verified when read.

    ``get`` of a value that fails the check says so on stderr (as ``name``) and
    waits, up to ``patience`` seconds, for a genuine writer to overwrite it (a
    stranger may write first), then raises :class:`RendezvousRefused` naming
    the key; every refusal is kept in ``refused``, so that the errors torch
    raises around a refused read can be told apart. ``clone`` is not
    implemented (gloo and TensorPipe never call it): torch then fails saying so.
    """

    def __init__(self, inner: dist.Store, key: bytes, *, patience: float, name: str) -> None:
        super().__init__()
        # Any: torch's stubs type values as str; the bindings take and give bytes.
        self._inner: Any = inner
        self._key = key
        self._patience = patience
        self._name = name
        self._reported: set[str] = set()
        self.refused: list[str] = []

    def _mac(self, name: str, nonce: bytes, payload: bytes) -> bytes:
        encoded = name.encode()
        message = len(encoded).to_bytes(4, "big") + encoded + nonce + payload
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def seal(self, name: str, payload: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        return self._mac(name, nonce, payload) + nonce + payload

    def open(self, name: str, raw: bytes) -> bytes | None:
        """The payload of a sealed value, or None when it was not signed with this key."""
        if len(raw) < _TAG + _NONCE:
            return None
        tag, nonce, payload = raw[:_TAG], raw[_TAG : _TAG + _NONCE], raw[_TAG + _NONCE :]
        return payload if hmac.compare_digest(tag, self._mac(name, nonce, payload)) else None

    def raw(self, name: str) -> bytes | None:
        """The stored bytes as they are, None when absent; never blocks."""
        return bytes(self._inner.get(name)) if self._inner.check([name]) else None

    def peek(self, name: str) -> bytes | None:
        """The verified payload, or None when absent or not signed; never blocks."""
        raw = self.raw(name)
        return None if raw is None else self.open(name, raw)

    def _refuse(self, name: str, raw: bytes) -> RendezvousRefused:
        what = f"the value of rendezvous key {name!r} ({len(raw)} bytes)"
        self.refused.append(what)
        return RendezvousRefused(
            f"refused {what}: it is not signed with this job's secret ({ENV_JOB_SECRET}); a "
            "process without the secret wrote it (one of another job or an earlier gang, or an "
            "intruder), or this process was started with another secret than its peers"
        )

    # -- the c10d Store interface (called by torch from C++ too) --------------------

    def set(self, key: str, value: bytes | str) -> None:
        payload = value.encode() if isinstance(value, str) else bytes(value)
        self._inner.set(key, self.seal(key, payload))

    def get(self, key: str) -> bytes:
        deadline = time.monotonic() + self._patience
        while True:
            raw = bytes(self._inner.get(key))  # blocks until present (the inner timeout)
            payload = self.open(key, raw)
            if payload is not None:
                return payload
            if time.monotonic() > deadline:
                raise self._refuse(key, raw)
            if key not in self._reported:
                self._reported.add(key)
                print(
                    f"rlhfjob {self._name}: refused the value of rendezvous key {key!r} "
                    f"({len(raw)} bytes): it is not signed with this job's secret; waiting up "
                    f"to {self._patience:.0f}s for its real writer",
                    file=sys.stderr,
                    flush=True,
                )
            time.sleep(0.05)

    def add(self, key: str, value: int) -> int:
        while True:
            raw = self.raw(key)
            current = 0
            if raw is not None:
                payload = self.open(key, raw)
                if payload is None:
                    raise self._refuse(key, raw)
                current = int(payload)
                if value == 0:
                    return current
            sealed = self.seal(key, str(current + value).encode())
            if bytes(self._inner.compare_set(key, raw or b"", sealed)) == sealed:
                return current + value

    def compare_set(
        self, key: str, expected_value: bytes | str, desired_value: bytes | str
    ) -> bytes:
        expected = expected_value.encode() if isinstance(expected_value, str) else expected_value
        desired = desired_value.encode() if isinstance(desired_value, str) else desired_value
        while True:
            raw = self.raw(key)
            if raw is None:
                if expected:
                    return bytes(expected)  # TCPStore: a missing key answers the expected value
            else:
                current = self.open(key, raw)
                if current is None:
                    raise self._refuse(key, raw)
                if current != expected:
                    return current
            sealed = self.seal(key, bytes(desired))
            if bytes(self._inner.compare_set(key, raw or b"", sealed)) == sealed:
                return bytes(desired)

    def check(self, keys: list[str]) -> bool:
        return bool(self._inner.check(keys))

    def wait(self, keys: list[str], timeout: timedelta | None = None) -> None:
        if timeout is None:
            self._inner.wait(keys)
        else:
            self._inner.wait(keys, timeout)

    def delete_key(self, key: str) -> bool:
        return bool(self._inner.delete_key(key))

    def num_keys(self) -> int:
        return int(self._inner.num_keys())

    def set_timeout(self, timeout: timedelta) -> None:
        self._inner.set_timeout(timeout)


class _RefusedMessage(RuntimeError):
    pass


_REPORTED_REFUSALS = 10


def sign_rpc_pickles(key: bytes, *, name: str) -> Callable[[], None]:
    """Sign every pickle torch RPC sends; verify every one it receives before unpickling.

    Both directions go through ``torch.distributed.rpc.internal``'s one pickler
    (requests, responses, remote exceptions; tensors travel beside the pickle
    and are not code). A message without a valid signature raises before a
    byte of it is unpickled: its sender gets the error, this process names it
    on stderr (the first few), and goes on. Returns the function that undoes it.
    """
    pickler = rpc_internal._internal_rpc_pickler
    serialize, deserialize = pickler.serialize, pickler.deserialize
    refusals = [0]

    def signed_serialize(obj: Any) -> tuple[bytes, list[torch.Tensor]]:
        payload, tensors = serialize(obj)
        return hmac.new(key, payload, hashlib.sha256).digest() + payload, tensors

    def verified_deserialize(binary_data: bytes, tensor_table: list[torch.Tensor]) -> Any:
        tag, payload = binary_data[:_TAG], binary_data[_TAG:]
        if len(binary_data) < _TAG or not hmac.compare_digest(
            tag, hmac.new(key, payload, hashlib.sha256).digest()
        ):
            refusals[0] += 1
            if refusals[0] <= _REPORTED_REFUSALS:
                print(
                    f"rlhfjob {name}: refused an RPC message of {len(binary_data)} bytes that is "
                    f"not signed with this job's secret ({ENV_JOB_SECRET}); nothing of it was "
                    "unpickled. A process outside the job reached this worker's RPC port.",
                    file=sys.stderr,
                    flush=True,
                )
            raise _RefusedMessage(
                f"{name} refused this RPC message: it is not signed with the job's secret; "
                "nothing of it was unpickled"
            )
        return deserialize(payload, tensor_table)

    pickler.serialize, pickler.deserialize = signed_serialize, verified_deserialize  # type: ignore[method-assign]

    def undo() -> None:
        pickler.serialize, pickler.deserialize = serialize, deserialize  # type: ignore[method-assign]

    return undo


_state: dict[str, Any] = {}


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
    )
    return json.dumps(dataclasses.asdict(me)).encode()


def _claim(raw: bytes) -> str:
    """What a refused record says it is, for the message; JSON at most, never a pickle."""
    for body in (raw[_TAG + _NONCE :], raw):
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


def start(env: WorkerEnv, *, startup_timeout: float = 120.0, rpc_timeout: float = 0) -> list[Peer]:
    """Meet the other processes, start RPC and gloo; returns every peer, by rank.

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
    # The C++ side holds these stores by reference only: keep the Python objects alive.
    _state.update(store=store, tcp=tcp)
    try:
        store.set(f"peer/{env.rank}", _record(env))
        peers = _gather_peers(store, env, deadline=deadline)
    except BaseException:
        _state.clear()  # the store dies with its last reference: a driver's listener closes
        raise

    def handler(url: str, **kwargs: Any) -> Iterator[tuple[dist.Store, int, int]]:
        del url, kwargs
        yield dist.PrefixStore("rpc", store), env.rank, env.world_size

    register_rendezvous_handler("rlhfjob", handler)
    undo = sign_rpc_pickles(job_key(env, "rpc"), name=env.name)
    try:
        dist.init_process_group(
            "gloo",
            store=dist.PrefixStore("pg", store),
            rank=env.rank,
            world_size=env.world_size,
            timeout=timedelta(seconds=max(startup_timeout, 600)),
        )
        # Tensor payloads between processes of one host take cross-memory attach (CMA: one
        # process_vm_readv, no socket), CUDA IPC on GPUs. Control messages take TCP ("uv"),
        # not TensorPipe's "shm" transport: its reactor busy-polls a core per process, which
        # made the PPO example 7x slower with 7 processes on 2 cores (3.05 s vs 0.44 s).
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
        rpc.init_rpc(
            env.name, rank=env.rank, world_size=env.world_size, rpc_backend_options=options
        )
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
    rpc._set_rpc_timeout(rpc_timeout)
    _state.update(env=env, peers=peers, stop=threading.Event(), undo=undo)
    return peers


def watch(on_lost: Callable[[str], None]) -> None:
    """Start the heartbeat thread; ``on_lost(message)`` is called once when a peer is lost.

    Workers publish a heartbeat and check the driver's store; the driver also
    checks every worker's heartbeat age.
    """
    env: WorkerEnv = _state["env"]
    peers: list[Peer] = _state["peers"]
    stop: threading.Event = _state["stop"]
    # A client of its own: one store client is not safe to share between threads. Beats
    # are signed too: a stranger can neither fake a dead worker's nor stop a live one's.
    client = SignedStore(
        dist.TCPStore(
            env.master_addr, env.master_port, is_master=False, timeout=timedelta(seconds=5)
        ),
        job_key(env, "rendezvous"),
        patience=0,
        name=env.name,
    )
    _state["heartbeat_store"] = client

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
                        value = client.peek(key) or b""
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
        undo = _state.get("undo")
        if undo is not None:
            undo()
        _state.clear()


def fail_fast(message: str, *, code: int) -> None:
    """Print ``message`` and end the process now: a lost peer leaves nothing to save."""
    print(f"rlhfjob: {message}", file=sys.stderr, flush=True)
    os._exit(code)
