"""``rlhfjob run job.yaml``: the job's plan as local processes, the embedded default.

Each worker of ``plan.plan_job`` becomes ``python -m rlhfjob.worker`` with the
same environment contract a pod gets (``MASTER_ADDR`` is 127.0.0.1, the
rendezvous port a free one; the driver's metrics port another, on 127.0.0.1,
printed to stderr). The driver's output passes through as it is (its
progress bar and episode lines); every other worker's lines are prefixed with
``[<role>-<replica>]``. Third-party noise (gloo's connection lines, torch's
deprecation warning) is dropped unless ``RLHFJOB_LOG_LEVEL=debug`` is set in
the environment of ``rlhfjob run``, which every process inherits: by each
process during its startup (``rlhfjob.comm.quiet``), and here from every
worker line, which also catches the groups a worker joins later (parameter
sync, data parallel).

Every start of the gang draws a fresh ``RLHFJOB_JOB_SECRET`` that only its
processes get, so no process of another run, or of an earlier start of this
one, passes the rendezvous. Their gloo and TensorPipe listeners bind to the
loopback interface (``GLOO_SOCKET_IFNAME`` and ``TP_SOCKET_IFNAME`` are ``lo``
unless set), so nothing off this host reaches them.

Failure policy, as the operator's: when any process fails, every other one is
stopped (process groups, SIGTERM then SIGKILL) and the gang is restarted from
its last checkpoint (the line saying so names its episode, or why there is none:
``rlhfjob_operator.restarts``) with exponential backoff, up to ``max_restarts``
(default ``spec.runPolicy.backoffLimit``); a permanent failure (exit 78) is
never retried. No process is left behind, whatever happens, and no file:
every process gets a ``TMPDIR`` of its own (as a pod gets a /tmp emptyDir),
removed once its gang has stopped, so what a SIGKILLed process could not
clean up (torch.distributed's import-time TemporaryDirectory, say) goes too.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from rlhfjob_operator.contract import (
    DEFAULT_BACKOFF,
    DRIVER_ROLE,
    ENV_JOB_SECRET,
    ENV_METRICS_HOST,
    EXIT_OK,
    EXIT_PERMANENT,
    EXIT_RETRYABLE,
    LOG_INFO,
    NOISE_PATTERN,
    WORKER_COMMAND,
    Backoff,
    Final,
    describe_exit,
    entrypoint_path,
    log_level,
    shm_prefix,
)
from rlhfjob_operator.plan import JobPlan, Worker, plan_job
from rlhfjob_operator.restarts import latest_saved_episode, restart_origin
from rlhfjob_operator.spec import RLHFJob, load_job
from rlhfjob_operator.spec.failure import attempt, first_match

__all__ = ["RunResult", "free_port", "run_job", "sweep_shm"]

_POLL_S = 0.05
_GRACE_S = 5.0


@dataclass(frozen=True)
class RunResult:
    """How a local run ended: the exit code to return and the restarts it took."""

    code: int
    restarts: int
    message: str


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (bound and released), from below the kernel's
    ephemeral range where there is room.

    A port from that range (what binding port 0 gives) stays free only until the
    kernel hands it to the next port-0 bind or outgoing connection, and a job makes
    hundreds (gloo's and TensorPipe's listeners, every connection): one did take the
    driver's metrics port between this call and the driver's bind, which failed the
    job. Ports below the range go only to who asks for them by number. When the range
    starts too low to leave room, or 64 tries find nothing free, it falls back to port 0.
    """
    low = _ephemeral_low()
    for _ in range(64 if low > _LOWEST + 1024 else 0):
        port = random.randrange(_LOWEST, low)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_LOWEST = 20000  # below: the ports of services that may run on a developer's machine


def _ephemeral_low(path: Path = Path("/proc/sys/net/ipv4/ip_local_port_range")) -> int:
    """The first port the kernel hands out to port-0 binds (32768 where unknown)."""
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def sweep_shm(prefix: str, root: Path = Path("/dev/shm")) -> list[str]:
    """Unlink ``root``'s segments named ``prefix``*; returns their names.

    Workers unlink their own at exit; this catches what a SIGKILLed one could not.
    """
    swept = []
    with contextlib.suppress(FileNotFoundError):
        for entry in root.iterdir():
            if entry.name.startswith(prefix):
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
                    swept.append(entry.name)
    return swept


_NOISE = re.compile(NOISE_PATTERN)


def _quiet(environ: dict[str, str]) -> bool:
    """Whether worker output loses its third-party noise lines (RLHFJOB_LOG_LEVEL=info).

    A value the contract refuses shows everything: the workers exit 78 naming
    the variable, and that message must get through.
    """
    try:
        return log_level(environ) == LOG_INFO
    except ValueError:
        return False


def _pump(stream: IO[bytes], prefix: str, out: IO[str], *, quiet: bool) -> None:
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace")
        if quiet and _NOISE.match(line):
            continue
        out.write(f"[{prefix}] {line}")
        out.flush()
    stream.close()


@dataclass
class _Proc:
    worker: Worker
    popen: subprocess.Popen[bytes]
    pump: threading.Thread | None

    def describe(self) -> str:
        w = self.worker
        return f"{w.hostname} (role {w.role}, replica {w.replica}, pid {self.popen.pid})"


def _start(
    plan: JobPlan,
    *,
    spec_path: str,
    checkpoint_dir: str,
    generation: int,
    metrics_port: int,
    secret: str,
    scratch: Path,
    python: str,
    out: IO[str],
) -> list[_Proc]:
    procs = []
    for worker in plan.workers:
        env = dict(os.environ)
        tmp = scratch / worker.hostname
        tmp.mkdir()
        env["TMPDIR"] = str(tmp)
        env.update(
            plan.env(
                worker,
                master_addr="127.0.0.1",
                spec_path=spec_path,
                checkpoint_dir=checkpoint_dir,
                restart_generation=generation,
                metrics_port=metrics_port if worker.is_driver else 0,
            )
        )
        env["PYTHONUNBUFFERED"] = "1"
        env[ENV_METRICS_HOST] = "127.0.0.1"
        env[ENV_JOB_SECRET] = secret
        for ifname in ("GLOO_SOCKET_IFNAME", "TP_SOCKET_IFNAME"):
            env.setdefault(ifname, "lo")
        if worker.is_driver:
            popen = subprocess.Popen([python, *WORKER_COMMAND[1:]], env=env, start_new_session=True)
            procs.append(_Proc(worker, popen, None))
            continue
        popen = subprocess.Popen(
            [python, *WORKER_COMMAND[1:]],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        assert popen.stdout is not None
        pump = threading.Thread(
            target=_pump,
            args=(popen.stdout, worker.hostname, out),
            kwargs={"quiet": _quiet(env)},
            daemon=True,
        )
        pump.start()
        procs.append(_Proc(worker, popen, pump))
    return procs


def _signal_all(procs: list[_Proc], sig: int) -> None:
    for proc in procs:
        if proc.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.popen.pid, sig)


def _stop_all(procs: list[_Proc]) -> None:
    """SIGTERM every process group, SIGKILL what is left after a grace period, reap all."""
    _signal_all(procs, signal.SIGTERM)
    deadline = time.monotonic() + _GRACE_S
    while time.monotonic() < deadline and any(p.popen.poll() is None for p in procs):
        time.sleep(_POLL_S)
    _signal_all(procs, signal.SIGKILL)
    for proc in procs:
        proc.popen.wait()
        # The group may hold children of the worker: kill them even after it exited.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.popen.pid, signal.SIGKILL)
        if proc.pump is not None:
            proc.pump.join(timeout=_GRACE_S)


def root_cause(ended: list[tuple[float, str, int, str]]) -> tuple[int, str, str] | None:
    """The failure a gang ended with, from ``(seen at, who, exit code, role)`` of every
    process that ended: (its exit code, a message naming it, its role), or None when
    none failed. Any 78 is the cause (a restart would repeat it); otherwise the
    earliest-ended failure that is not a 75 (a 75 is a process noticing that a peer
    died), and only when every failure is a 75 the earliest of those. A process killed
    by signal N reads as exit 128+N, as a container's does; its message names the
    signal."""
    failures = sorted(e for e in ended if e[2] != EXIT_OK)
    if not failures:
        return None
    permanent = [f for f in failures if f[2] == EXIT_PERMANENT]
    first = (permanent or [f for f in failures if f[2] != EXIT_RETRYABLE] or failures)[0]
    _, who, code, role = first
    return (code if code >= 0 else 128 - code), f"{who} {describe_exit(code)}", role


def _watch(procs: list[_Proc], *, timeout: float | None) -> tuple[int, str, str]:
    """Wait until the driver ends or anything fails; returns (code, message naming the
    root cause, its role; see :func:`root_cause`)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    ended: dict[int, tuple[float, str, int, str]] = {}

    def poll() -> None:
        for index, proc in enumerate(procs):
            code = proc.popen.poll()
            if code is not None and index not in ended:
                who = proc.describe() if index == 0 else f"worker {proc.describe()}"
                ended[index] = (time.monotonic(), who, code, proc.worker.role)

    def settle() -> None:
        # The driver's graceful shutdown waits for every worker, and a failure takes its
        # peers down within moments: give them those, so the root cause is among the seen.
        end = time.monotonic() + _GRACE_S
        while time.monotonic() < end and len(ended) < len(procs):
            time.sleep(_POLL_S)
            poll()

    while True:
        poll()
        # Workers end with 0 once the driver shuts RPC down, just before the driver does:
        # only the driver's end (index 0) or a failure ends the watch.
        if 0 in ended or any(e[2] != EXIT_OK for e in ended.values()):
            settle()
            cause = root_cause(list(ended.values()))
            if cause is None:
                return EXIT_OK, "the driver succeeded", DRIVER_ROLE
            return cause
        if deadline is not None and time.monotonic() > deadline:
            return EXIT_RETRYABLE, f"the job ran past its {timeout:.0f}s deadline", ""
        time.sleep(_POLL_S)


def run_job(
    manifest: str | Path | RLHFJob,
    *,
    spec_path: str | None = None,
    checkpoint_dir: str | None = None,
    max_restarts: int | None = None,
    backoff: Backoff = DEFAULT_BACKOFF,
    timeout: float | None = None,
    python: str = sys.executable,
    out: IO[str] = sys.stdout,
    err: IO[str] = sys.stderr,
) -> RunResult:
    """Run the job's plan as local processes until the driver ends; restart on failures.

    ``checkpoint_dir`` defaults to ``spec.runtime.data_checkpoint_path``;
    restarts resume from it. What follows a failure is the contract's
    the job's ``runPolicy.failurePolicy`` (its exit-code rules: processes have no pod
    conditions), as on Kubernetes, with ``backoff`` between attempts. ``timeout``
    bounds each attempt.
    """
    job = load_job(manifest)
    if spec_path is None:
        if not isinstance(manifest, (str, Path)):
            raise ValueError("run_job needs spec_path when given a parsed RLHFJob")
        spec_path = str(Path(manifest).resolve())
    entrypoint_path(job.spec.entrypoint.file, spec_path)  # fail before starting anything
    ckpt = checkpoint_dir or job.spec.runtime.data_checkpoint_path or ""
    limit = job.spec.run_policy.backoff_limit if max_restarts is None else max_restarts
    generation = restarts = 0
    while True:
        plan = plan_job(job, master_port=free_port())
        metrics_port = free_port()
        print(
            f"rlhfjob run: driver metrics at http://127.0.0.1:{metrics_port}/metrics",
            file=err,
            flush=True,
        )
        scratch = Path(tempfile.mkdtemp(prefix=f"rlhfjob-{plan.job_name}-"))
        try:
            procs = _start(
                plan,
                spec_path=spec_path,
                checkpoint_dir=ckpt,
                generation=generation,
                metrics_port=metrics_port,
                secret=secrets.token_urlsafe(32),
                scratch=scratch,
                python=python,
                out=out,
            )
            try:
                code, message, role = _watch(procs, timeout=timeout)
            finally:
                _stop_all(procs)
                sweep_shm(shm_prefix(plan.job_name, plan.master_port))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        if code == EXIT_OK:
            return RunResult(EXIT_OK, generation, message)
        print(f"rlhfjob run: {message}", file=err, flush=True)
        policy = job.spec.run_policy.failure_policy
        match = first_match(
            policy.rule_list if policy else (), names=plan.names_of(role), code=code, conditions={}
        )
        next_ = attempt(match, restarts=restarts, limit=limit, backoff=backoff)
        if match.index is not None:
            message += f"; {match.describe()}"
        if isinstance(next_, Final):
            exit_code = EXIT_RETRYABLE if next_.reason == "BackoffLimitExceeded" else EXIT_PERMANENT
            return RunResult(exit_code, generation, f"{message} ({next_.why})")
        generation += 1
        restarts += next_.counted
        counted = f"restart {restarts} of {limit}" if next_.counted else "not counted"
        origin = restart_origin(job.spec.runtime, saved=latest_saved_episode(ckpt))
        print(
            f"rlhfjob run: restarting the gang {origin} in {next_.delay:.0f}s ({counted})",
            file=err,
            flush=True,
        )
        time.sleep(next_.delay)
