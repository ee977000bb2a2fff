"""The requesting end of a control channel: :class:`Client` and its :class:`Reply` futures.

A request is ``(id, request)``; the server answers ``(id, ok, value)``, where
``ok`` False carries the handler's traceback (raised here as RemoteError).
"""

from __future__ import annotations

import threading
from typing import Any

from rlhfjob.comm.framing import NOTHING, Connection

__all__ = ["Client", "RemoteError", "Reply"]


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
