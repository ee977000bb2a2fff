"""A lean control channel: pickled frames over one authenticated TCP connection.

Why not torch RPC for control messages: a TensorPipe round trip of a tiny
message costs about 0.9 ms on a 2-core VM (its pickler, thread pool and
reactor), a plain TCP round trip between two processes about 35 us. The
driver sends every small operation (model calls, hooks, frees) over one of
these per worker, so a call costs little more than the socket.

Each frame is an 8-byte big-endian length and a pickle (protocol 5). A
server talks only to connections that prove they know the job's secret
(HMAC-SHA256 of a fresh nonce); anything else is closed unanswered, so the
port never unpickles a stranger's bytes.

The layers: :mod:`rlhfjob.comm.pickling` (the tensor-aware pickle),
:mod:`rlhfjob.comm.framing` (frames on one connection), :mod:`rlhfjob.comm.client`
(requests and their replies); this module authenticates connections and
serves them, and re-exports the rest so callers import from one place.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import threading
import traceback
from collections.abc import Callable
from typing import Any

from rlhfjob.comm.client import Client, RemoteError, Reply
from rlhfjob.comm.framing import NOTHING, Connection, recv_exact
from rlhfjob.comm.pickling import Pickler, dumps

__all__ = [
    "ADOPT",
    "NOTHING",
    "Client",
    "Connection",
    "Pickler",
    "RemoteError",
    "Reply",
    "Server",
    "connect",
    "dumps",
    "reachable_ip",
    "replier",
]

_NONCE = 32
_HANDSHAKE_S = 10.0
# The first request of a connection whose reader becomes the server's ``adopt`` callback.
ADOPT = ("adopt",)


def reachable_ip(peer_host: str) -> str:
    """The local address this host uses to reach ``peer_host`` (no packet is sent).

    A loopback ``peer_host`` gives 127.0.0.1, so local jobs listen on loopback only.
    """
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect((peer_host, 9))
        return str(probe.getsockname()[0])
    finally:
        probe.close()


def _proof(secret: bytes, nonce: bytes) -> bytes:
    return hmac.new(secret, nonce, hashlib.sha256).digest()


class Server:
    """Serves every peer that knows ``secret`` on ``host`` (an ephemeral port).

    Each authenticated connection gets a daemon thread that reads ``(id,
    request)`` frames and calls ``handler(request, reply)``; the handler calls
    ``reply(value)`` once, now or later from any thread, and ``(id, True, value)``
    goes back. An exception from the handler goes back as ``(id, False, text)``.
    A connection whose first request is ``ADOPT`` is handed to ``adopt(conn)``
    instead, which reads it from then on (saving a thread switch a request).
    Connections that fail the challenge or stay silent past the handshake
    timeout are closed unanswered.
    """

    def __init__(
        self,
        host: str,
        secret: bytes,
        handler: Callable[[Any, Callable[[Any], None]], None],
        *,
        adopt: Callable[[Connection], None] | None = None,
    ) -> None:
        self._secret = secret
        self._handler = handler
        self._adopt = adopt
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind((host, 0))
        self._sock.listen(64)
        self.address: tuple[str, int] = self._sock.getsockname()[:2]
        threading.Thread(target=self._accept_loop, name="rlhfjob-ctl-accept", daemon=True).start()

    def _accept_loop(self) -> None:
        while True:
            try:
                sock, _ = self._sock.accept()
            except OSError:  # closed
                return
            threading.Thread(
                target=self._serve, args=(sock,), name="rlhfjob-ctl-serve", daemon=True
            ).start()

    def _authenticate(self, sock: socket.socket) -> bool:
        try:
            sock.settimeout(_HANDSHAKE_S)
            nonce = os.urandom(_NONCE)
            sock.sendall(nonce)
            if hmac.compare_digest(recv_exact(sock, _NONCE), _proof(self._secret, nonce)):
                sock.sendall(b"\x01")
                return True
        except (OSError, EOFError):
            pass
        return False

    def _serve(self, sock: socket.socket) -> None:
        if not self._authenticate(sock):
            sock.close()
            return
        conn = Connection(sock)
        try:
            while True:
                rid, request = conn.recv()
                if request == ADOPT and self._adopt is not None:
                    self._adopt(conn)  # its reader now; this thread is done
                    return

                try:
                    self._handler(request, replier(conn, rid))
                except Exception:
                    conn.send((rid, False, traceback.format_exc()))
        except (EOFError, OSError):
            conn.close()

    def close(self) -> None:
        self._sock.close()


def replier(conn: Connection, rid: int) -> Callable[[Any], None]:
    """The function that answers request ``rid`` on ``conn`` with a value.

    A peer that is gone is not an error here (its side reports the loss); a
    value that cannot be pickled is answered with a failure that says so.
    """

    def reply(value: Any) -> None:
        try:
            conn.send((rid, True, value))
        except OSError:
            pass
        except Exception as exc:
            conn.send((rid, False, f"cannot send the reply: {exc!r}"))

    return reply


def connect(address: tuple[str, int], secret: bytes, *, timeout: float) -> Connection:
    """Connect to a Server and answer its challenge; ConnectionError when refused."""
    sock = socket.create_connection(address, timeout=timeout)
    try:
        nonce = recv_exact(sock, _NONCE)
        sock.sendall(_proof(secret, nonce))
        if recv_exact(sock, 1) != b"\x01":
            raise ConnectionError(f"the control channel at {address} refused the secret")
    except (OSError, EOFError) as exc:
        sock.close()
        raise ConnectionError(f"control channel handshake with {address} failed: {exc}") from exc
    return Connection(sock)
