"""Frames on one control-channel connection: an 8-byte big-endian length and a pickle.

:class:`Connection` never blocks a sender on its peer (what the socket cannot
take is queued for a flusher thread), and reads many small frames per system
call. A frame announcing more than ``_MAX_FRAME`` bytes is taken for
corruption and ends the connection (EOFError).
"""

from __future__ import annotations

import collections
import contextlib
import pickle
import socket
import struct
import threading
from typing import Any

from rlhfjob.comm.pickling import dumps

__all__ = ["NOTHING", "Connection", "recv_exact"]

_HEADER = struct.Struct("!Q")
# Larger than any control message: frames above it are refused as corrupt.
_MAX_FRAME = 1 << 34
NOTHING = object()  # recv(block=False) found no whole frame


def recv_exact(sock: socket.socket, size: int) -> bytes:
    """The next ``size`` bytes of ``sock``; EOFError when the peer closes first."""
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
