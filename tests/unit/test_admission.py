"""The socket filter of ``rlhfjob.comm.admission`` against the real kernel: a connection
from an address the gang published is accepted, one from any other is never accepted
(its SYN is dropped), on listeners of this test's own making."""

from __future__ import annotations

import builtins
import io
import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest

from rlhfjob.comm import admission

FIB_TRIE = """Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 127.0.0.0/8 2 0 2
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
           |-- 10.1.2.3
              /32 host LOCAL
           |-- 10.1.2.0
              /24 link UNICAST
Local:
           |-- 127.0.0.1
              /32 host LOCAL
"""


def test_local_ipv4_reads_every_local_host_address_once() -> None:
    assert admission.local_ipv4(FIB_TRIE) == ["127.0.0.1", "10.1.2.3"]


def test_the_program_is_whole_instructions_ending_in_drop_then_accept() -> None:
    program = admission.filter_program(["10.0.0.1", "fd00::5", "::ffff:10.0.0.2"])
    insns = [struct.unpack("HBBI", program[i : i + 8]) for i in range(0, len(program), 8)]
    assert len(program) % 8 == 0
    assert insns[-2] == (0x06, 0, 0, 0) and insns[-1] == (0x06, 0, 0, 0xFFFFFFFF)
    # The IPv4-mapped address is checked as IPv4: both IPv4 values appear as constants.
    constants = {k for code, _, _, k in insns if code == 0x15}
    assert {0x0A000001, 0x0A000002} <= constants


def test_bad_addresses_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="not-an-ip"):
        admission.filter_program(["not-an-ip"])
    many = [f"10.{i // 256}.{i % 256}.1" for i in range(2100)]
    with pytest.raises(ValueError, match="4096"):
        admission.filter_program(many)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        sock.settimeout(2)
        yield sock


def _connect(port: int, source: str) -> str:
    with socket.socket() as client:
        client.bind((source, 0))
        client.settimeout(1.0)
        try:
            client.connect(("127.0.0.1", port))
        except TimeoutError:
            return "timed out"
        client.sendall(b"hello")
        return "connected"


def test_only_published_addresses_get_through(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    guarded = admission.guard(["127.0.0.1", "::1"])
    assert listener.fileno() in guarded
    assert listener.fileno() in admission.guard(["127.0.0.1", "::1"])  # again: replaced
    assert _connect(port, "127.0.0.2") == "timed out"
    assert _connect(port, "127.0.0.1") == "connected"
    accepted, (source, _) = listener.accept()
    with accepted:
        assert source == "127.0.0.1"
        assert accepted.recv(5) == b"hello"  # the accepted socket inherits a filter it passes
    listener.settimeout(0.3)
    with pytest.raises(TimeoutError):
        listener.accept()  # the stranger's connection never reached the queue


def test_an_exempt_listener_admits_anyone(listener: socket.socket) -> None:
    admission.exempt(listener.fileno())
    assert listener.fileno() not in admission.guard(["127.0.0.1", "::1"])
    assert _connect(listener.getsockname()[1], "127.0.0.2") == "connected"


def test_no_published_address_guards_nothing(listener: socket.socket) -> None:
    assert admission.guard_peers([]) == []
    assert _connect(listener.getsockname()[1], "127.0.0.2") == "connected"


def test_a_listener_the_kernels_table_skips_is_still_guarded(
    listener: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The failure seen in CI: a worker that found its listeners in /proc/net/tcp missed
    one (the kernel writes that table page by page, and a row can be skipped while other
    listeners of the host come and go) and left it open to strangers. Here the table
    skips this listener's row every time; guard() must still find and guard it."""
    port = f":{listener.getsockname()[1]:04X} "
    real_open = open

    def skipping(path: Any, *args: Any, **kwargs: Any) -> Any:
        if str(path).endswith(("/net/tcp", "/net/tcp6")):
            with real_open(path, *args, **kwargs) as table:
                return io.StringIO("".join(row for row in table if port not in row))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", skipping)
    assert listener.fileno() in admission.guard(["127.0.0.1"])
    monkeypatch.undo()
    assert _connect(listener.getsockname()[1], "127.0.0.2") == "timed out"
