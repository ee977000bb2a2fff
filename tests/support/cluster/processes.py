"""Component processes (dying with the test process), free ports, bounded waits."""

from __future__ import annotations

import contextlib
import os
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rlhfjob_operator.local import free_port


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on loopback, from below the kernel's ephemeral range
    (rlhfjob_operator.local.free_port: a port-0 port can be handed to the next outgoing
    connection before the component binds it, as happened to the driver's metrics port).
    """
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def _die_with_parent() -> None:
    # If pytest is SIGKILLed (CI timeout), the kernel kills the component too,
    # so nothing outlives the session. Runs in the child between fork and exec.
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except OSError:
        pass


class Component:
    """One control-plane process in its own process group, logging to a file."""

    def __init__(self, name: str, argv: list[str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the process group, SIGKILL it after `grace` seconds; bounded."""
        if self.proc is None:
            return
        pgid = self.proc.pid  # start_new_session: the group id is the pid
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, sig)
            try:
                self.proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # The leader may be gone while a child of it lingers in the group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)


def wait_until(
    predicate: Callable[[], Any],
    *,
    timeout: float,
    what: str,
    interval: float = 0.2,
    fatal: tuple[type[BaseException], ...] = (),
) -> Any:
    """Poll `predicate` until it returns something truthy (returned) or raise
    TimeoutError naming `what` and the last exception the predicate raised.
    Exceptions of the `fatal` types end the wait at once."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = predicate()
            if result:
                return result
        except fatal:
            raise
        except Exception as e:  # retried until the deadline
            last_error = e
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)


def wait_while_running(
    comp: Component,
    ok: Callable[[], Any],
    *,
    what: str,
    timeout: float,
    error: type[Exception],
    interval: float = 0.2,
) -> None:
    """wait_until `ok` while `comp` runs; `error` (naming the component, its exit code
    or the timeout, and the last lines of its log) when it exits or time runs out."""

    def check() -> Any:
        code = comp.exit_code()
        if code is not None:
            raise error(
                f"{comp.name} exited with code {code} while waiting for {what}; "
                f"last lines of {comp.log_path.name}:\n{comp.tail()}"
            )
        return ok()

    try:
        wait_until(check, timeout=timeout, what=what, interval=interval, fatal=(error,))
    except TimeoutError as e:
        raise error(
            f"{comp.name}: {e}; last lines of {comp.log_path.name}:\n{comp.tail()}"
        ) from None


def http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False
