"""free_port(): a port the job's own port-0 binds cannot take before its user binds it."""

from __future__ import annotations

import socket

from rlhfjob_operator import local
from rlhfjob_operator.local import free_port


def test_the_port_is_below_the_ephemeral_range_and_free():
    low = local._ephemeral_low()
    for _ in range(20):
        port = free_port()
        assert local._LOWEST <= port < low, (port, low)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # still free: nothing else was handed it


def test_a_range_that_leaves_no_room_below_falls_back_to_port_0(monkeypatch):
    real_low = local._ephemeral_low()
    monkeypatch.setattr(local, "_ephemeral_low", lambda: local._LOWEST + 10)
    assert free_port() >= real_low  # what the kernel hands a port-0 bind


def test_an_unreadable_range_reads_as_the_kernels_default(tmp_path):
    assert local._ephemeral_low(tmp_path / "missing") == 32768
    (tmp_path / "range").write_text("40000 60999\n")
    assert local._ephemeral_low(tmp_path / "range") == 40000
