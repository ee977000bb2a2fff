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
"""

from __future__ import annotations

import collections
import contextlib
import copyreg
import hashlib
import hmac
import io
import os
import pickle
import socket
import struct
import threading
import traceback
from collections.abc import Callable
from typing import Any

import torch

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
]

_HEADER = struct.Struct("!Q")
_NONCE = 32
_HANDSHAKE_S = 10.0
# Larger than any control message: frames above it are refused as corrupt.
_MAX_FRAME = 1 << 34
NOTHING = object()  # recv(block=False) found no whole frame
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


def _rebuild_tensor(
    data: bytearray, dtype: str, shape: tuple[int, ...], requires_grad: bool
) -> torch.Tensor:
    kind = getattr(torch, dtype)
    if not data:
        return torch.empty(shape, dtype=kind, requires_grad=requires_grad)
    t = torch.frombuffer(data, dtype=kind).view(shape)
    return t.requires_grad_() if requires_grad else t


# Dtypes numpy holds, so ``Tensor.numpy()`` gives their bytes without a torch view.
_NUMPY_DTYPES = {
    d: str(d).removeprefix("torch.")
    for d in (
        torch.float16,
        torch.float32,
        torch.float64,
        torch.int8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.uint8,
        torch.bool,
    )
}


def _reduce_tensor(t: torch.Tensor) -> Any:
    if not t.is_cpu or t.layout != torch.strided or t.is_quantized:
        return t.__reduce_ex__(5)
    name = _NUMPY_DTYPES.get(t.dtype)
    if name is not None and not t.requires_grad and t.is_contiguous() and t.numel():
        # The common case in as few torch calls as can be: each costs microseconds, more
        # in a process that has just woken up with cold caches, as a worker has.
        array: Any = t.numpy()
        return _rebuild_tensor, (pickle.PickleBuffer(array), name, tuple(t.shape), False)
    flat = t.detach().resolve_conj().resolve_neg().contiguous().view(-1)
    data: Any = flat.view(torch.uint8).numpy() if flat.numel() else bytearray()
    dtype = str(t.dtype).removeprefix("torch.")
    return _rebuild_tensor, (
        pickle.PickleBuffer(data),
        dtype,
        tuple(t.shape),
        t.requires_grad and t.is_leaf,
    )


_DISPATCH = {**copyreg.dispatch_table, torch.Tensor: _reduce_tensor}


class Pickler(pickle.Pickler):
    """Pickles plain CPU tensors as their bytes: torch's own reducer goes through
    ``torch.save`` and costs about 0.5 ms a tensor, which would be most of a call.
    A dispatch table, not ``reducer_override``: that would be a Python call per object."""

    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file, protocol=5)
        self.dispatch_table = _DISPATCH


def dumps(obj: Any) -> bytes:
    """``pickle.dumps`` with the fast tensor reducer; ``pickle.loads`` reads it."""
    buffer = io.BytesIO()
    Pickler(buffer).dump(obj)
    return buffer.getvalue()


def _proof(secret: bytes, nonce: bytes) -> bytes:
    return hmac.new(secret, nonce, hashlib.sha256).digest()


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise EOFError("the peer closed the connection")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


class Connection:
    """One end of a channel: ``send`` from any thread, ``recv`` from one thread."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(None)
        self.sock = sock
        self._send_lock = threading.Lock()
        self._pending: collections.deque[bytes | memoryview] = collections.deque()
        self._flushing = False
        self._error: str | None = None
        self._buffer = bytearray()
        self._chunk = bytearray(1 << 20)
        self._view = memoryview(self._chunk)

    def send(self, obj: Any) -> None:
        """Pickle and send ``obj`` without blocking; raises OSError once the peer is gone.

        What the socket cannot take at once is queued and written by a flusher
        thread, in order: a sender never waits for its peer to read, so two
        processes that each wait on the other cannot wedge on full buffers.
        """
        payload = dumps(obj)
        frame = _HEADER.pack(len(payload)) + payload
        with self._send_lock:
            if self._error is not None:
                raise OSError(self._error)
            if self._flushing:
                self._pending.append(frame)
                return
            try:
                sent = self.sock.send(frame, socket.MSG_DONTWAIT)
            except BlockingIOError:
                sent = 0
            if sent == len(frame):
                return
            self._pending.append(memoryview(frame)[sent:])
            self._flushing = True
        threading.Thread(target=self._flush, name="rlhfjob-ctl-flush", daemon=True).start()

    def _flush(self) -> None:
        while True:
            with self._send_lock:
                if not self._pending:
                    self._flushing = False
                    return
                chunk = self._pending.popleft()
            try:
                self.sock.sendall(chunk)
            except OSError as exc:
                with self._send_lock:
                    self._error = f"sending failed: {exc}"
                    self._pending.clear()
                    self._flushing = False
                return

    def recv(self, *, block: bool = True) -> Any:
        """The next object; EOFError when the peer closed the connection.

        With ``block=False``, returns ``NOTHING`` when no whole frame has arrived yet.
        """
        while True:
            if len(self._buffer) >= _HEADER.size:
                (size,) = _HEADER.unpack_from(self._buffer)
                if size > _MAX_FRAME:
                    raise EOFError(f"corrupt frame of {size} bytes on the control channel")
                end = _HEADER.size + size
                if len(self._buffer) >= end:
                    frame = bytes(self._buffer[_HEADER.size : end])
                    del self._buffer[:end]
                    return pickle.loads(frame)
            # One recv takes whatever has arrived: many small frames in one system call. Into
            # a buffer kept for it: a fresh 1 MiB per recv is an mmap and its page faults.
            try:
                size = self.sock.recv_into(self._chunk, 0, 0 if block else socket.MSG_DONTWAIT)
            except BlockingIOError:
                return NOTHING
            if not size:
                raise EOFError("the peer closed the connection")
            self._buffer += self._view[:size]

    def close(self) -> None:
        with contextlib.suppress(OSError):  # already closed by the peer
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


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
            if hmac.compare_digest(_recv_exact(sock, _NONCE), _proof(self._secret, nonce)):
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


class RemoteError(RuntimeError):
    """The server's handler raised; the message holds its traceback."""


class Reply:
    """The future reply to one request: ``wait()`` (raising the failure), ``done()``, ``value()``.

    Whoever waits reads the connection itself: no reader thread, so a round trip
    costs no thread switch on the caller's side.
    """

    __slots__ = ("_client", "_error", "_set", "_value")

    def __init__(self, client: Client) -> None:
        self._client = client
        self._set = False
        self._value: Any = None
        self._error: BaseException | None = None

    def done(self) -> bool:
        if not self._set:
            self._client._pump(self, block=False)
        return self._set

    def wait(self) -> Any:
        if not self._set:
            self._client._pump(self, block=True)
        if self._error is not None:
            raise self._error
        return self._value

    value = wait

    def _resolve(self, value: Any, error: BaseException | None) -> None:
        self._value, self._error, self._set = value, error, True


class Client:
    """Requests over one connection; each returns a ``Reply``. Thread-safe.

    When the connection breaks, every open reply and every later request
    fails with ConnectionError naming ``peer``.
    """

    def __init__(self, conn: Connection, peer: str) -> None:
        self._conn = conn
        self._peer = peer
        self._cond = threading.Condition()
        self._open: dict[int, Reply] = {}
        self._next = 0
        self._reading = False
        self._broken: str | None = None

    def request(self, request: Any) -> Reply:
        reply = Reply(self)
        with self._cond:
            if self._broken is not None:
                reply._resolve(None, ConnectionError(self._broken))
                return reply
            rid = self._next
            self._next += 1
            self._open[rid] = reply
        try:
            self._conn.send((rid, request))
        except OSError as exc:
            self._fail(f"the control channel to {self._peer} broke: {exc}")
        return reply

    def _pump(self, reply: Reply, *, block: bool) -> None:
        """Read replies until ``reply`` is in (one at a time reads; the others wait)."""
        while True:
            with self._cond:
                while self._reading and not reply._set:
                    if not block:
                        return
                    self._cond.wait()
                if reply._set:
                    return
                self._reading = True
            frame: Any = NOTHING
            try:
                frame = self._conn.recv(block=block)
            except (EOFError, OSError) as exc:
                self._fail(f"the control channel to {self._peer} broke: {exc}")
            finally:
                with self._cond:
                    self._reading = False
                    if frame is not NOTHING:
                        rid, ok, value = frame
                        got = self._open.pop(rid)
                        got._resolve(value, None if ok else RemoteError(value))
                    self._cond.notify_all()
            if frame is NOTHING and not block:
                return

    def _fail(self, message: str) -> None:
        with self._cond:
            if self._broken is None:
                self._broken = message
            replies, self._open = list(self._open.values()), {}
            for reply in replies:
                reply._resolve(None, ConnectionError(message))
            self._cond.notify_all()

    def close(self) -> None:
        self._fail(f"the control channel to {self._peer} was closed")
        self._conn.close()


def connect(address: tuple[str, int], secret: bytes, *, timeout: float) -> Connection:
    """Connect to a Server and answer its challenge; ConnectionError when refused."""
    sock = socket.create_connection(address, timeout=timeout)
    try:
        nonce = _recv_exact(sock, _NONCE)
        sock.sendall(_proof(secret, nonce))
        if _recv_exact(sock, 1) != b"\x01":
            raise ConnectionError(f"the control channel at {address} refused the secret")
    except (OSError, EOFError) as exc:
        sock.close()
        raise ConnectionError(f"control channel handshake with {address} failed: {exc}") from exc
    return Connection(sock)
