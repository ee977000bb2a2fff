"""The signed rendezvous store and RPC pickles, in one process over a real TCPStore.

What a peer without the job's secret writes never verifies, what torch's own
rendezvous relies on (set/get, add as a counter, compare_set) keeps TCPStore's
semantics, and an RPC pickle without the job's signature is refused before a
byte of it is unpickled (while the same bytes, unguarded, would run code).
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import pickle
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.distributed.rpc import internal as rpc_internal

from rlhfjob.comm.env import WorkerEnv
from rlhfjob.comm.errors import RendezvousRefused
from rlhfjob.comm.rpc_pickles import sign_rpc_pickles
from rlhfjob.comm.signing import SignedStore, job_key
from rlhfjob_operator.local import free_port

KEY, OTHER = b"k" * 32, b"o" * 32


@pytest.fixture
def tcp() -> Iterator[dist.TCPStore]:
    store = dist.TCPStore(
        "127.0.0.1",
        free_port(),
        1,
        is_master=True,
        timeout=timedelta(seconds=10),
        wait_for_workers=False,
    )
    yield store
    del store


def client(tcp: dist.TCPStore) -> dist.TCPStore:
    return dist.TCPStore("127.0.0.1", tcp.port, is_master=False, timeout=timedelta(seconds=10))


def signed(inner: dist.Store, key: bytes = KEY, patience: float = 0) -> SignedStore:
    return SignedStore(inner, key, patience=patience, name="test")


def test_values_round_trip_and_are_sealed_on_the_wire(tcp: dist.TCPStore) -> None:
    store = signed(tcp)
    store.set("a", "hello")
    store.set("b", b"\x00\xff")
    assert store.get("a") == b"hello" and store.get("b") == b"\x00\xff"
    raw = bytes(tcp.get("a"))
    assert raw.endswith(b"hello") and len(raw) == len(b"hello") + 48


def test_a_value_signed_with_another_key_is_refused_naming_the_key(tcp: dist.TCPStore, capsys):
    signed(tcp, OTHER).set("peer/1", b'{"name": "rogue"}')
    tcp.set("plain", "unsigned")
    mine = signed(tcp, patience=0.2)
    for key in ("peer/1", "plain"):
        with pytest.raises(RendezvousRefused, match=rf"rendezvous key '{key}'"):
            mine.get(key)
        assert mine.peek(key) is None
    assert len(mine.refused) == 2
    assert "waiting up to 0s for its real writer" in capsys.readouterr().err


def test_a_value_moved_to_another_key_does_not_verify(tcp: dist.TCPStore) -> None:
    store = signed(tcp)
    store.set("peer/1", b"record")
    tcp.set("peer/2", bytes(tcp.get("peer/1")))  # replayed under another name
    assert store.peek("peer/1") == b"record"
    assert store.peek("peer/2") is None


def test_get_waits_for_the_real_writer_to_replace_a_strangers_value(
    tcp: dist.TCPStore, tmp_path: Path
) -> None:
    """Ordered, not timed: the real value is written only once the reader has refused the
    stranger's pickle, so the refusal path runs every time and the pickle never opens."""
    marker = tmp_path / "unpickled"
    tcp.set("k", pickle.dumps(_Payload(marker)))
    reader = signed(tcp, patience=30)

    def write_once_refused() -> None:
        deadline = time.monotonic() + 30
        while "k" not in reader._reported and time.monotonic() < deadline:
            time.sleep(0.01)
        signed(client(tcp)).set("k", b"real")

    writer = threading.Thread(target=write_once_refused)
    writer.start()
    try:
        assert reader.get("k") == b"real"
    finally:
        writer.join()
    assert "k" in reader._reported  # the stranger's value was read first, and refused
    assert not marker.exists()


def test_add_counts_like_tcpstore_even_when_racing(tcp: dist.TCPStore) -> None:
    store = signed(tcp)
    assert store.add("n", 0) == 0
    assert store.add("n", 5) == 5 and store.add("n", -2) == 3 and store.add("n", 0) == 3

    def bump() -> None:
        mine = signed(client(tcp))
        for _ in range(25):
            mine.add("race", 1)

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert store.add("race", 0) == 100  # no increment lost to a compare-and-set race


def test_add_on_a_forged_counter_is_refused(tcp: dist.TCPStore) -> None:
    tcp.set("n", "41")
    with pytest.raises(RendezvousRefused, match="'n'"):
        signed(tcp).add("n", 1)


def test_compare_set_has_tcpstores_semantics(tcp: dist.TCPStore) -> None:
    ours, theirs = signed(tcp), client(tcp)
    # Missing key: an empty expected value creates it; any other is answered back.
    assert ours.compare_set("a", "", "v1") == b"v1" == theirs.compare_set("b", "", "v1")
    assert ours.compare_set("c", "x", "v1") == b"x" == theirs.compare_set("d", "x", "v1")
    assert not ours.check(["c"]) and not theirs.check(["d"])
    # Present: swapped when it matches, else the current value comes back.
    assert ours.compare_set("a", "v1", "v2") == b"v2" == theirs.compare_set("b", "v1", "v2")
    assert ours.compare_set("a", "zz", "v3") == b"v2" == theirs.compare_set("b", "zz", "v3")
    assert ours.get("a") == b"v2"
    tcp.set("forged", "v1")
    with pytest.raises(RendezvousRefused):
        ours.compare_set("forged", "v1", "v2")


def test_keys_differ_by_job_generation_and_purpose() -> None:
    def env(**change: object) -> WorkerEnv:
        base: dict[str, object] = dict(
            job_name="a",
            role="driver",
            models=(),
            replica=0,
            rank=0,
            world_size=1,
            master_addr="127.0.0.1",
            master_port=1,
            spec_path="x",
            checkpoint_dir="",
            metrics_port=0,
            restart_generation=0,
            secret="s" * 32,
        )
        base.update(change)
        return WorkerEnv(**base)  # type: ignore[arg-type]

    keys = {
        job_key(env(), "rendezvous"),
        job_key(env(), "rpc"),
        job_key(env(job_name="b"), "rendezvous"),
        job_key(env(restart_generation=1), "rendezvous"),
        job_key(env(secret="t" * 32), "rendezvous"),
    }
    assert len(keys) == 5
    assert job_key(env(), "rpc") == job_key(env(rank=3, role="x"), "rpc")  # one key per gang
    assert "s" * 32 not in repr(env())


class _Payload:
    """Pickles into "create this file" (what a stranger would send a worker's RPC port)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[object, tuple[str, ...]]:
        return (os.mknod, (self.path,))


def test_an_unsigned_rpc_pickle_is_refused_unopened(tmp_path: Path, capsys) -> None:
    pickler = rpc_internal._internal_rpc_pickler
    marker = tmp_path / "ran"
    evil = pickle.dumps(_Payload(marker))
    # The payload is live: unguarded, deserializing it runs code.
    pickler.deserialize(evil, [])
    assert marker.exists()
    marker.unlink()

    undo = sign_rpc_pickles(KEY, name="actor-0")
    try:
        data, tensors = rpc_internal.serialize({"t": torch.ones(2), "n": 3})
        back = rpc_internal.deserialize(data, tensors)
        assert back["n"] == 3 and torch.equal(back["t"], torch.ones(2))
        for bad in (evil, data[:-1] + bytes([data[-1] ^ 1]), b"short"):
            with pytest.raises(RuntimeError, match="not signed with the job's secret"):
                rpc_internal.deserialize(bad, [])
        # Signed, but with another job's key: refused too.
        foreign = hmac.new(OTHER, evil, hashlib.sha256).digest() + evil
        with pytest.raises(RuntimeError, match="nothing of it was unpickled"):
            rpc_internal.deserialize(foreign, [])
    finally:
        undo()
    assert not marker.exists()
    assert "rlhfjob actor-0: refused an RPC message" in capsys.readouterr().err
    # Undone: torch's own pickler again.
    assert pickle.load(io.BytesIO(pickler.serialize(5)[0])) == 5
