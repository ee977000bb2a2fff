"""No leftovers: after every test, nothing it started is still running, listening or on disk.

A pytest plugin (registered by tests/conftest.py). After each test's teardown
(its function-scoped fixtures included; what broader fixtures set up before it
is not the test's) it looks for

- **processes** of this session: every process whose environment carries
  ``RLHFJOB_TEST_SESSION=<pytest's pid>``, which this plugin sets at start-up,
  so children, their children and processes reparented to init after their
  parent died all carry it (a launcher that builds a clean environment, like
  the e2e pod runner, passes it on);
- **ports**: TCP sockets listening in this process or in one of those;
- **temp dirs**: entries of the session's own temporary directory (TMPDIR is
  set to a fresh ``rlhfjob-tests-<pid>`` for the session and every child, so
  entries of other sessions on the machine never count); pytest's own
  ``tmp_path`` tree is removed by pytest at the end;
- **shared memory**: entries of /dev/shm that appeared during the test, are
  still there a second later (multiprocessing unlinks its semaphores right
  after creating them) and that no process outside this session holds open or
  mapped. /dev/shm is the machine's: while another pytest session runs on it,
  an entry cannot be told to be this session's, so it is listed as
  unattributed in the summary instead of failing the test.

multiprocessing's resource tracker and forkserver, which an in-process use of
multiprocessing starts once for the rest of pytest's life, and the temp dir
torch.distributed.nn makes at import (removed at exit), are pytest's own
helpers, not leftovers.

The test's fixture values are dropped first (pytest keeps them referenced
until after teardown, and an object that owns a socket closes it only when it
dies). Processes get up to 15 s to finish exiting. Anything found fails the test at
teardown, naming it, and is removed (processes SIGKILLed) so that the next test
starts clean. At the end of the session the same check runs against the
session's start (session fixtures torn down by then), and the tally is printed::

    leftovers: 0 found after 412 tests (processes, listening ports, temp dirs, /dev/shm)
"""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ENV_SESSION = "RLHFJOB_TEST_SESSION"
_PREFIX = "rlhfjob-tests-"
_SHM = Path("/dev/shm")
_PROC = Path("/proc")
_GRACE_S = 15.0
_SHM_SETTLE_S = 1.0
# Started once by multiprocessing for the interpreter that uses it, ended at its exit.
_HELPERS = (
    "from multiprocessing.resource_tracker import main",
    "from multiprocessing.forkserver import main",
)
_ROOT = Path(tempfile.gettempdir())  # the machine's, before this session's replaces it


@dataclass
class _Tally:
    tests: int = 0
    found: list[str] = field(default_factory=list)
    reported: set[str] = field(default_factory=set)
    unattributed: list[str] = field(default_factory=list)
    session_dir: Path | None = None
    start: Any = None


_tally = _Tally()


@dataclass(frozen=True)
class _State:
    processes: dict[int, str]  # pid -> what it runs
    ports: dict[str, str]  # "pid addr:port" -> what the pid runs
    temp: frozenset[str]
    shm: frozenset[str]


def _marker() -> bytes:
    return f"{ENV_SESSION}={os.getpid()}".encode()


def _processes() -> dict[int, str]:
    """Live (not zombie) processes of this session, other than pytest itself."""
    me, marker, out = os.getpid(), _marker(), {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            if marker not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            continue
        helper = int(stat[1]) == me and any(h in cmdline for h in _HELPERS)
        if stat[0] != "Z" and not helper:
            out[int(entry.name)] = cmdline.strip()[:200]
    return out


def _listening() -> dict[int, str]:
    """Inode -> "addr:port" of every listening TCP socket on the machine."""
    out = {}
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in (_PROC / "net" / table).read_text().splitlines()[1:]:
                cols = line.split()
                if len(cols) > 9 and cols[3] == "0A":  # TCP_LISTEN
                    addr, port = cols[1].rsplit(":", 1)
                    out[int(cols[9])] = f"{_address(addr)}:{int(port, 16)}"
    return out


def _address(hexed: str) -> str:
    raw = bytes.fromhex(hexed)
    if len(raw) == 4:
        return ".".join(str(b) for b in raw[::-1])
    words = [raw[i : i + 4][::-1].hex() for i in range(0, 16, 4)]
    return "[" + ":".join(w[j : j + 4] for w in words for j in (0, 4)) + "]"


def _ports(pids: dict[int, str]) -> dict[str, str]:
    listening = _listening()
    out = {}
    owners = {os.getpid(): "pytest", **pids}
    for pid, what in owners.items():
        with contextlib.suppress(OSError):
            for fd in (_PROC / str(pid) / "fd").iterdir():
                with contextlib.suppress(OSError):
                    link = os.readlink(fd)
                    if link.startswith("socket:["):
                        inode = int(link[8:-1])
                        if inode in listening:
                            out[f"pid {pid} {listening[inode]}"] = what
    return out


def _interpreter_temp() -> set[str]:
    """Temp dirs this interpreter keeps until it exits (see the module doc)."""
    found = set()
    instantiator = sys.modules.get("torch.distributed.nn.jit.instantiator")
    held = getattr(instantiator, "_TEMP_DIR", None)
    if held is not None:
        found.add(Path(held.name).name)
    return found


def _temp() -> frozenset[str]:
    root = _tally.session_dir
    if root is None or not root.is_dir():
        return frozenset()
    mine = _interpreter_temp()
    return frozenset(
        p.name for p in root.iterdir() if not p.name.startswith("pytest-of-") and p.name not in mine
    )


def _shm() -> frozenset[str]:
    try:
        return frozenset(p.name for p in _SHM.iterdir())
    except OSError:
        return frozenset()


def _state() -> _State:
    processes = _processes()
    return _State(processes, _ports(processes), _temp(), _shm())


def _held_elsewhere(names: set[str], session: set[int]) -> set[str]:
    """Which /dev/shm ``names`` a process outside this session has open or mapped."""
    held: set[str] = set()
    paths = {str(_SHM / n): n for n in names}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) in session or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            for line in (entry / "maps").read_text().splitlines():
                name = paths.get(line.rsplit(" ", 1)[-1].removesuffix(" (deleted)"))
                if name is not None:
                    held.add(name)
        with contextlib.suppress(OSError):
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    name = paths.get(os.readlink(fd))
                    if name is not None:
                        held.add(name)
    return held


def _ancestors() -> set[int]:
    """This process and its parents (a pytest that runs this one is not a rival)."""
    found, pid = set(), os.getpid()
    while pid > 1 and pid not in found:
        found.add(pid)
        try:
            pid = int((_PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
    return found


def _other_sessions() -> bool:
    """Whether a pytest outside this session runs on the machine."""
    mine, marker = _ancestors(), _marker()
    for entry in _PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        with contextlib.suppress(OSError):
            if b"pytest" in (entry / "cmdline").read_bytes() and marker not in (
                entry / "environ"
            ).read_bytes().split(b"\0"):
                return True
    return False


def _leftovers(before: _State) -> list[str]:
    """What exists now that did not before, waiting a little for processes to exit."""
    deadline = time.monotonic() + _GRACE_S
    while True:
        now = _state()
        procs = {p: w for p, w in now.processes.items() if p not in before.processes}
        if not procs or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    found = [f"process {pid}: {what}" for pid, what in sorted(procs.items())]
    found += [
        f"listening port ({key}): {what}"
        for key, what in now.ports.items()
        if key not in before.ports
    ]
    found += [f"temp dir entry {_tally.session_dir}/{n}" for n in sorted(now.temp - before.temp)]
    new_shm = set(now.shm - before.shm)
    if new_shm:
        time.sleep(_SHM_SETTLE_S)
        new_shm &= _shm()
        new_shm -= _held_elsewhere(new_shm, set(now.processes))
    if new_shm and _other_sessions():
        _tally.unattributed += [f"/dev/shm/{n}" for n in sorted(new_shm)]
        new_shm = set()  # maybe another session's: neither reported nor removed
    found += [f"/dev/shm/{n}" for n in sorted(new_shm)]
    _remove(procs, now.temp - before.temp, new_shm)
    return found


def _remove(procs: dict[int, str], temp: frozenset[str], shm: set[str]) -> None:
    for pid in procs:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    root = _tally.session_dir
    for name in temp:
        if root is not None:
            path = root / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    path.unlink()
    for name in shm:
        with contextlib.suppress(OSError):
            (_SHM / name).unlink()


def _sweep_dead_sessions() -> None:
    """Remove the temp dirs of sessions that were SIGKILLed (their pid is gone)."""
    for d in _ROOT.glob(f"{_PREFIX}*"):
        try:
            pid = int(d.name.removeprefix(_PREFIX))
            os.kill(pid, 0)
        except ValueError:
            continue
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except PermissionError:
            pass  # alive, another user's


def pytest_configure(config: pytest.Config) -> None:
    _sweep_dead_sessions()
    session_dir = _ROOT / f"{_PREFIX}{os.getpid()}"
    session_dir.mkdir(exist_ok=True)
    _tally.session_dir = session_dir
    os.environ[ENV_SESSION] = str(os.getpid())
    os.environ["TMPDIR"] = str(session_dir)
    tempfile.tempdir = str(session_dir)
    _tally.start = _state()


@pytest.fixture(autouse=True)
def no_leftovers(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fails the test at teardown if it left something behind (see the module doc)."""
    before = _state()
    yield
    _tally.tests += 1
    # Every other function-scoped fixture is torn down: drop the values pytest still
    # holds for the test (broader fixtures' values stay alive in their own caches).
    getattr(request.node, "funcargs", {}).clear()
    gc.collect()
    found = _leftovers(before)
    if found:
        _record(found)
        pytest.fail("left behind:\n  " + "\n  ".join(found), pytrace=False)


def _record(found: list[str], *, prefix: str = "") -> None:
    for item in found:
        if item not in _tally.reported:
            _tally.reported.add(item)
            _tally.found.append(prefix + item)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    if _tally.start is None:
        return
    found = _leftovers(_tally.start)
    if found:
        _record(found, prefix="at the end of the session: ")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _tally.start is None:
        return
    write = terminalreporter.write_line
    write("")
    write(
        f"leftovers: {len(_tally.found)} found after {_tally.tests} tests "
        "(processes, listening ports, temp dirs, /dev/shm)"
    )
    for item in _tally.found:
        write(f"  {item}")
    if _tally.unattributed:
        write(
            f"  and {len(_tally.unattributed)} /dev/shm entries not counted: another test "
            "session ran on this machine meanwhile"
        )


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    if _tally.session_dir is not None:
        shutil.rmtree(_tally.session_dir, ignore_errors=True)
