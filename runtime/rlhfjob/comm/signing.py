"""HMAC signing with the job's secret: per-job keys and the signed c10d store.

Authentication. torch RPC unpickles what it receives, and neither the
TCPStore nor TensorPipe nor gloo asks who is talking, so every process holds
the job's secret (``RLHFJOB_JOB_SECRET``; a process without one refuses to
start, naming the variable) and:

- signs every value it puts into the rendezvous and verifies every value it
  reads (:class:`SignedStore`, under the peer records and under torch's own
  gloo and RPC rendezvous, counters and compare-and-set included), so a
  process without the secret cannot join, be placed, or slip its address in
  where gloo or TensorPipe would connect to it; nobody starts gloo or RPC
  until every rank's record verified (``rlhfjob.comm.rendezvous``);
- signs every pickle that torch RPC sends and checks the signature before
  unpickling anything it receives (``rlhfjob.comm.rpc_pickles``), so bytes
  sent to a worker's TensorPipe port by a stranger are refused unopened.

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

import hashlib
import hmac
import os
import sys
import time
from datetime import timedelta
from typing import Any

import torch.distributed as dist

from rlhfjob.comm.env import WorkerEnv
from rlhfjob.comm.errors import RendezvousRefused
from rlhfjob_operator.contract import ENV_JOB_SECRET

__all__ = ["NONCE_BYTES", "TAG_BYTES", "SignedStore", "job_key"]

TAG_BYTES = 32  # HMAC-SHA256
NONCE_BYTES = 16


def job_key(env: WorkerEnv, purpose: str) -> bytes:
    """A key for one use (``rendezvous``, ``rpc``, ...) derived from the job's secret.

    Bound to the job's name and restart generation: what an earlier gang of the
    same job (same Secret on Kubernetes) signed does not verify in this one.
    """
    info = f"rlhfjob/v1/{purpose}\0{env.job_name}\0{env.restart_generation}".encode()
    return hmac.new(env.secret.encode(), info, hashlib.sha256).digest()


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
        nonce = os.urandom(NONCE_BYTES)
        return self._mac(name, nonce, payload) + nonce + payload

    def open(self, name: str, raw: bytes) -> bytes | None:
        """The payload of a sealed value, or None when it was not signed with this key."""
        if len(raw) < TAG_BYTES + NONCE_BYTES:
            return None
        tag, nonce, payload = (
            raw[:TAG_BYTES],
            raw[TAG_BYTES : TAG_BYTES + NONCE_BYTES],
            raw[TAG_BYTES + NONCE_BYTES :],
        )
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
