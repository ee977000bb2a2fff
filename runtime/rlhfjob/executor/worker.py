"""The worker's runtime: its modules, run one operation at a time in the driver's order.

Submissions carry a per-worker sequence number and run strictly in that
order on one thread, so every module sees its calls in the order the driver
issued them (determinism, bitwise equality with the in-process executor)
while pulls of stored values are served concurrently by the channel's and
RPC's threads. A value is kept until the driver frees it at the end of the
episode.

Operations arrive on the driver's control channel, which the exec thread
reads itself between operations (no thread switch a call), or by torch RPC
for those that carry weights (``via_rpc``); a pipe wakes the exec thread for
those.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import traceback
from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.distributed.rpc as rpc

from rlhfjob.comm.channel import NOTHING, Connection, Server, reachable_ip, replier
from rlhfjob.comm.env import WorkerEnv
from rlhfjob.executor.operations import HANDLERS
from rlhfjob.executor.protocol import (
    Call,
    Endpoint,
    Failure,
    Fill,
    Layout,
    Operation,
    Submit,
    lost_peer,
)
from rlhfjob.executor.pulls import Exchange, Upstream
from rlhfjob.module import BaseModule
from rlhfjob_operator.contract import shm_prefix

__all__ = ["WorkerRuntime", "remote_start_control", "remote_submit"]

_EXEC_THREAD = "rlhfjob-exec"
# An operation taken off the queue: what to run, and where its result goes.
_Job = tuple[Operation, Callable[[Any], None]]


class WorkerRuntime:
    """The modules of one worker process and the values they produced."""

    current: ClassVar[WorkerRuntime | None] = None

    def __init__(self, env: WorkerEnv) -> None:
        self.env = env
        self.modules: dict[str, BaseModule] = {}
        self.groups: dict[str, Any] = {}
        self.bucket_bytes = 100 * 2**20
        self.exchange = Exchange(
            env.name, shm_prefix=f"{shm_prefix(env.job_name, env.master_port)}{env.rank}_"
        )
        self.lock = threading.Lock()
        self.ready = threading.Condition(self.lock)
        self.jobs: dict[int, _Job] = {}
        self.next_seq = 0
        self.server: Server | None = None
        # The driver's connection, read by the exec thread itself between operations; the
        # pipe wakes it when an operation comes by torch RPC instead.
        self.driver: Connection | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._serves: dict[type, Callable[[Any, Callable[[Any], None]], None]] = {
            Submit: self._serve_submit,
            Layout: self.exchange.serve_layout,
            Fill: self.exchange.serve_fill,
        }
        threading.Thread(target=self._loop, name=_EXEC_THREAD, daemon=True).start()

    @classmethod
    def install(cls, env: WorkerEnv) -> WorkerRuntime:
        """This process's runtime, made ready for the RPC functions below; call it before
        RPC starts (the driver may call the moment rendezvous completes)."""
        runtime = cls(env)
        cls.current = runtime
        Exchange.local = runtime.exchange
        return runtime

    # --- the control channel -------------------------------------------------------

    def start_control(self, secret: bytes) -> Endpoint:
        """Serve the control channel (once); returns its address and this /dev/shm's domain.

        ValueError when it was started already with another secret.
        """
        with self.lock:
            if self.server is None:
                self.exchange.secret = secret
                host = reachable_ip(self.env.master_addr)
                self.server = Server(host, secret, self.handle, adopt=self._adopt)
            elif secret != self.exchange.secret:
                raise ValueError("the control channel was started with another secret")
        return Endpoint(self.server.address, self.exchange.domain)

    def handle(self, request: Any, reply: Callable[[Any], None]) -> None:
        """One request of the control channel: a submission, or a pull of a stored value."""
        serve = self._serves.get(type(request))
        if serve is None:
            raise ValueError(f"unknown control request {request!r}")
        serve(request, reply)

    def _serve_submit(self, request: Submit, reply: Callable[[Any], None]) -> None:
        self.submit(request.seq, request.operation, reply)

    def _adopt(self, conn: Connection) -> None:
        with self.ready:
            self.driver = conn
            self.ready.notify()

    # --- the exec thread -------------------------------------------------------------

    def submit(self, seq: int, operation: Operation, done: Callable[[Any], None]) -> None:
        """Queue operation ``seq``; ``done(result)`` is called on the exec thread when it ran."""
        with self.ready:
            self.jobs[seq] = (operation, done)
            self.ready.notify()
            reading = self.driver is not None
        if reading and threading.current_thread().name != _EXEC_THREAD:
            with contextlib.suppress(BlockingIOError):
                os.write(self._wake_w, b"\0")

    def _take(self) -> _Job | None:
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
        if not isinstance(request, Submit):
            text = f"the driver's channel takes submissions, not {type(request).__name__}"
            conn.send((rid, False, text))
            return
        # A gone driver is not handled here: the heartbeat ends us.
        self.submit(request.seq, request.operation, replier(conn, rid))

    def _loop(self) -> None:
        while True:
            job = self._take()
            if job is None:
                continue
            operation, done = job
            try:
                result = HANDLERS[type(operation)](self, operation)
            except Upstream as exc:
                result = exc.failure
            except BaseException as exc:  # every failure goes back to the driver
                result = Failure(
                    f"{operation.op} failed on {self.env.name} (role {self.env.role}, replica "
                    f"{self.env.replica}, pid {os.getpid()}):\n{traceback.format_exc()}",
                    retryable=lost_peer(exc),
                )
            if isinstance(result, Failure) and isinstance(operation, Call):
                self.exchange.value(operation.key).set_result(result)
            done(result)


def _runtime() -> WorkerRuntime:
    runtime = WorkerRuntime.current
    if runtime is None:
        raise RuntimeError("this process is not an rlhfjob worker")
    return runtime


@rpc.functions.async_execution
def remote_submit(request: Submit) -> torch.futures.Future[Any]:
    """Torch RPC's submission (operations that carry weights); the future is the result."""
    done: torch.futures.Future[Any] = torch.futures.Future()
    _runtime().submit(request.seq, request.operation, done.set_result)
    return done


def remote_start_control(secret: bytes) -> Endpoint:
    """Torch RPC's start of the control channel (the secret comes by RPC, never over the
    channel it guards)."""
    return _runtime().start_control(secret)
