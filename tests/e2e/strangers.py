"""A stranger on a job's ports: the payloads, and what a port did with each (issue 18).

The kinds of payload (:data:`KINDS`): 64 random bytes, a header claiming 2**62 bytes
(little- and big-endian), and a header cut short and held open; and
:func:`other_job`, the control channel's handshake answered with another job's
secret. Every probe waits at most :data:`WAIT_S` per step and reports what it saw
(``refused (never accepted)``: the SYN was dropped, ``ignored (held open)``,
``connection reset``, ``closed port``, ``answered N bytes``...).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import random
import secrets
import socket
from concurrent.futures import ThreadPoolExecutor

from gangs import job_pids

STRANGER = "127.0.0.2"  # no process of a job publishes it: a host or pod outside the job
LOCAL = "127.0.0.1"  # where every process of one host connects from (admitted)
WAIT_S = 1.0  # how long a probe waits for a connection or an answer

KINDS = ("random", "oversized", "truncated")
# Outcomes in which nothing of the payload was read: the SYN dropped by the address
# filter, or no listener left on the port (one that closed between listing and probe).
UNREAD = frozenset({"refused (never accepted)", "closed port"})


def payloads_of(rng: random.Random) -> list[bytes]:
    """One payload of each of :data:`KINDS`, in that order."""
    claim = 2**62
    return [
        rng.randbytes(64),
        claim.to_bytes(8, "little") + claim.to_bytes(8, "big") + rng.randbytes(48),
        (1000).to_bytes(8, "little") + (1000).to_bytes(8, "big")[:4],
    ]


def probe(target: tuple[str, int], source: str, payload: bytes) -> str:
    """What the listener at ``target`` did with ``payload`` sent from ``source``."""
    try:
        sock = socket.create_connection(target, timeout=WAIT_S, source_address=(source, 0))
    except TimeoutError:
        return "refused (never accepted)"
    except ConnectionRefusedError:
        return "closed port"
    except OSError as exc:
        return f"no connection: {exc}"
    with sock:
        try:
            sock.sendall(payload)
            sock.settimeout(WAIT_S)
            reply = sock.recv(64)
        except TimeoutError:
            return "ignored (held open)"
        except (ConnectionResetError, BrokenPipeError):
            return "connection reset"
    return f"answered {len(reply)} bytes" if reply else "connection closed"


def other_job(target: tuple[str, int]) -> str:
    """The control channel's handshake answered with another job's secret."""
    try:
        sock = socket.create_connection(target, timeout=WAIT_S)
    except OSError:
        return "other job: no connection"
    nonce = b""
    with sock:
        try:
            nonce = sock.recv(32)
            if len(nonce) < 32:
                return "other job: no challenge"
            sock.sendall(hmac.new(secrets.token_bytes(32), nonce, hashlib.sha256).digest())
            verdict = sock.recv(1)
        except TimeoutError:
            return "other job: held" if nonce else "other job: no challenge"
        except (ConnectionResetError, BrokenPipeError):
            return "other job: reset"
    return "other job: ACCEPTED" if verdict else "other job's proof: closed"


def job_ports(job: str) -> dict[tuple[str, int], tuple[str, int]]:
    """Every listener of the job's processes: (address, port) -> (role, pid). A listener
    on every address (0.0.0.0, ::) is reached at 127.0.0.1."""
    found = {}
    for pid, role in job_pids(job).items():
        for _, host, port in listening_inodes(pid).values():
            found[(LOCAL if host in ("0.0.0.0", "::") else host, port)] = (role, pid)
    return found


def labelled(outcomes: list[str]) -> list[str]:
    return [f"{kind} {seen}" for kind, seen in zip(KINDS, outcomes, strict=False)]


def sweep(target: tuple[str, int], source: str, payloads: list[bytes]) -> list[str]:
    """Every payload to ``target`` at once, from ``source``: what it did, in order."""
    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(lambda payload: probe(target, source, payload), payloads))


def listening_inodes(pid: int | str = "self") -> dict[int, tuple[int, str, int]]:
    """The listening TCP sockets of process ``pid`` (Linux; another process's only where
    ``/proc`` lets us read its file descriptors): socket inode -> (file descriptor,
    local address, port). A process that ended meanwhile has none.

    A snapshot, not always a complete one: the kernel writes ``/proc/<pid>/net/tcp``
    page by page, and a listener that opens or closes anywhere on the host between two
    pages can make a row be skipped (measured: 1 read in 3000 while another thread
    opened and closed listeners). A port missed here is a port not probed; the job's
    own guard does not read this table (``rlhfjob.comm.admission.guard``).
    """
    by_inode: dict[int, int] = {}
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return {}
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed since the listing
        if target.startswith("socket:["):
            by_inode[int(target[8:-1])] = int(fd)
    listening: dict[int, tuple[int, str, int]] = {}
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as rows:
                next(rows)
                for row in rows:
                    fields = row.split()
                    inode = int(fields[9])
                    if fields[3] == "0A" and inode in by_inode:  # 0A: TCP_LISTEN
                        host, port = fields[1].rsplit(":", 1)
                        listening[inode] = (by_inode[inode], _proc_address(host), int(port, 16))
        except OSError:
            continue
    return listening


def _proc_address(text: str) -> str:
    """An address as ``/proc/net/tcp[6]`` writes it: 32-bit words in host (little-endian)
    order, as hex."""
    words = [bytes.fromhex(text[i : i + 8])[::-1] for i in range(0, len(text), 8)]
    return str(ipaddress.ip_address(b"".join(words)))
