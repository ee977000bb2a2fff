"""The data plane's parts: the control channel, the shared-memory path, the launcher's sweep."""

from __future__ import annotations

import gc
import os
import pickle
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch

from conftest import rlhfjob_run, write_job
from rlhfjob.comm import shm
from rlhfjob.comm.channel import Client, RemoteError, Server, _proof, connect, dumps
from rlhfjob_operator.contract import shm_prefix
from rlhfjob_operator.local import sweep_shm

SECRET = b"s" * 32


def _serve(handler):
    server = Server("127.0.0.1", SECRET, handler)
    return server, server.address


@pytest.fixture
def echo_server():
    def handler(request, reply):
        if request == "raise":
            raise ValueError("handler said no")
        if request == "later":
            threading.Timer(0.05, reply, args=("late",)).start()
            return
        reply(request)

    server, address = _serve(handler)
    yield address
    server.close()


def test_channel_round_trips_values_and_tensors(echo_server):
    client = Client(connect(echo_server, SECRET, timeout=5), "echo")
    tensors = [
        torch.arange(10.0).view(2, 5).t(),  # not contiguous
        torch.zeros(0, 3),
        torch.tensor([True, False]),
        torch.ones(3, dtype=torch.bfloat16),
        torch.tensor(5),
        torch.randn(4, requires_grad=True),
    ]
    replies = [client.request({"t": t, "n": i}) for i, t in enumerate(tensors)]
    late = client.request("later")
    for i, (t, reply) in enumerate(zip(tensors, replies, strict=True)):
        got = reply.wait()
        assert got["n"] == i
        assert got["t"].dtype == t.dtype and got["t"].shape == t.shape
        assert torch.equal(got["t"].detach(), t.detach())
        assert got["t"].requires_grad == t.requires_grad
    assert late.wait() == "late"
    with pytest.raises(RemoteError, match="handler said no"):
        client.request("raise").wait()
    # Frames larger than a socket buffer go out whole, in order, while nobody reads yet.
    big = [client.request(torch.full((2**21,), float(i))) for i in range(4)]
    assert [float(r.wait()[0]) for r in reversed(big)] == [3.0, 2.0, 1.0, 0.0]
    client.close()
    with pytest.raises(ConnectionError, match="closed"):
        client.request(1).wait()


def test_channel_refuses_a_wrong_secret_and_never_unpickles_its_bytes():
    seen = []
    server, address = _serve(lambda request, reply: seen.append(request))
    try:
        with pytest.raises(ConnectionError, match="handshake"):
            connect(address, b"x" * 32, timeout=5)
        # A stranger that skips the handshake and sends a pickle is closed unanswered.
        with socket.create_connection(address, timeout=5) as sock:
            sock.recv(32)
            sock.sendall(dumps(("boom",)).ljust(32, b"\0"))
            sock.settimeout(5)
            assert sock.recv(1) == b""
        assert seen == []
        client = Client(connect(address, SECRET, timeout=5), "ok")
        client.request("hello")
        deadline = time.monotonic() + 5
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)
        assert seen == ["hello"]
        client.close()
    finally:
        server.close()


def test_channel_reports_a_peer_that_went_away():
    """A peer that authenticates, takes a request and dies: the waiter gets ConnectionError."""
    listener = socket.create_server(("127.0.0.1", 0))

    def peer() -> None:
        sock, _ = listener.accept()
        nonce = os.urandom(32)
        sock.sendall(nonce)
        assert sock.recv(32) == _proof(SECRET, nonce)
        sock.sendall(b"\x01")
        sock.recv(1024)  # the request
        sock.close()

    thread = threading.Thread(target=peer)
    thread.start()
    client = Client(connect(listener.getsockname(), SECRET, timeout=5), "the-peer")
    with pytest.raises(ConnectionError, match="the-peer"):
        client.request("hang").wait()
    with pytest.raises(ConnectionError, match="the-peer"):
        client.request("again").wait()
    thread.join(timeout=10)
    listener.close()


def test_layout_and_rebuild_keep_small_values_and_mark_large_ones():
    value = {"big": torch.ones(4, 2**18), "small": torch.arange(4), "names": list("abcd")}
    skeleton, sources, markers = shm.layout(value, None)
    assert isinstance(skeleton["big"], shm.Big) and skeleton["small"] is value["small"]
    assert sources == [value["big"]] and markers[0].shape == (4, 2**18)
    rows, _, row_markers = shm.layout(value, [3, 1])
    assert row_markers[0].shape == (2, 2**18)  # not selected yet: the producer writes the rows
    assert rows["small"].tolist() == [3, 1] and rows["names"] == ["d", "b"]
    assert shm.rebuild(skeleton, [torch.zeros(4, 2**18)])["big"].shape == (4, 2**18)
    # Only dicts have rows; other values pass as they are.
    assert shm.layout([1, 2], [0])[0] == [1, 2]


def test_pool_reuses_a_slot_once_its_tensors_are_gone_and_unlinks_at_close(tmp_path):
    pool = shm.Pool(f"rlhfjob_t{os.getpid()}pool_0_", keep_free=2 * 2**20)
    writer = shm.Writer()
    source = torch.arange(2**18, dtype=torch.float32)
    marker = shm.layout(source, None)[2][0]
    slot = pool.alloc(source.nbytes)
    writer.write(source, marker, None, (slot.name, slot.size))
    got = pool.tensor(slot, marker)
    view = got[10:20]
    assert torch.equal(got, source)
    del got
    gc.collect()
    assert pool.alloc(source.nbytes) is not slot, "a view still uses the slot"
    del view
    gc.collect()
    assert pool.alloc(source.nbytes) is slot
    pool.release(slot)
    names = pool.names()
    assert all((shm.SHM_ROOT / n).exists() for n in names)
    pool.close()
    assert not any((shm.SHM_ROOT / n).exists() for n in names)


def test_pool_trims_past_keep_free_and_tells_producers():
    pool = shm.Pool(f"rlhfjob_t{os.getpid()}trim_0_", keep_free=2**20)
    try:
        a, b = pool.alloc(2**20), pool.alloc(2**20)
        pool.release(a)
        pool.release(b)  # over keep_free: unlinked
        assert not (shm.SHM_ROOT / b.name).exists() and (shm.SHM_ROOT / a.name).exists()
        assert pool.dropped_for("producer") == [b.name]
        assert pool.dropped_for("producer") == []
    finally:
        pool.close()


def test_writer_refuses_bad_segment_names_and_small_slots():
    writer = shm.Writer()
    marker = shm.Big(0, (2**20,), torch.float32, False)
    with pytest.raises(ValueError, match="not a shared-memory segment name"):
        writer.write(torch.zeros(2**20), marker, None, ("../etc/passwd", 2**22))
    with pytest.raises(ValueError, match="too small"):
        writer.write(torch.zeros(2**20), marker, None, ("x", 2**20))


def test_shm_domain_is_shared_by_processes_of_this_host():
    mine = shm.domain()
    assert mine and mine.count(":") == 2
    code = "from rlhfjob.comm import shm; print(shm.domain())"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert other.stdout.strip() == mine


def test_sweep_removes_only_its_prefix(tmp_path):
    mine, theirs = shm_prefix("job-a", 1234), shm_prefix("job-a-1234", 5)
    assert not theirs.startswith(mine) and not mine.startswith(theirs)
    for name in (f"{mine}1_2_3", f"{mine}4_5_6", f"{theirs}1_2_3", "other"):
        (tmp_path / name).write_bytes(b"x")
    assert sorted(sweep_shm(mine, tmp_path)) == [f"{mine}1_2_3", f"{mine}4_5_6"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"{theirs}1_2_3", "other"])


RUNTIME = dict(
    num_episode=2,
    sample_per_episode=8,
    generation_batch_size=2,
    train_micro_batch_size=2,
    train_global_batch_size=4,
    data_shuffle=False,
)
MODELS = {"producer": {}, "consumer": {}, "learner": {"trainable": True}}


def _segments(job: str) -> list[str]:
    return [p.name for p in shm.SHM_ROOT.iterdir() if p.name.startswith(f"rlhfjob_{job}_")]


def test_large_tensors_arrive_intact_through_shared_memory(tmp_path, job_name):
    proc = rlhfjob_run(write_job(tmp_path, job_name, RUNTIME, MODELS, entry="shmjob.py"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "shmjob done" in proc.stdout
    assert _segments(job_name) == []


def test_a_sigkilled_worker_leaves_no_segment_behind(tmp_path, job_name):
    seen = tmp_path / "seen.txt"
    models = {**MODELS, "consumer": {"args": {"kill_after": 3, "seen": str(seen)}}}
    proc = rlhfjob_run(write_job(tmp_path, job_name, RUNTIME, models, entry="shmjob.py"))
    assert proc.returncode != 0
    assert "killed by SIGKILL" in proc.stderr, proc.stderr[-3000:]
    assert seen.read_text().split(), "the consumer held no segment when it was killed"
    assert _segments(job_name) == []


def test_small_outputs_ride_the_call_reply():
    from rlhfjob.executor.operations import INLINE_BYTES, pickled_if_small

    small = {"x": torch.arange(10), "names": ["a"]}
    assert torch.equal(pickle.loads(pickled_if_small(small))["x"], small["x"])
    assert pickled_if_small({"x": torch.zeros(INLINE_BYTES)}) is None
    assert pickled_if_small({"names": [f"{i:04d}" * 250 for i in range(100)]}) is None
    assert pickled_if_small({"f": lambda: 1}) is None  # unpicklable: fetched over RPC
    assert pickle.loads(pickled_if_small(None)) is None


def test_the_runtime_never_imports_ray():
    """Ray is the bench extra's baseline only."""
    code = (
        "import sys, pkgutil, importlib, rlhfjob as r; "
        "[importlib.import_module(m.name) for m in pkgutil.walk_packages(r.__path__, 'rlhfjob.')]; "
        "sys.exit('rlhfjob imported ray' if 'ray' in sys.modules else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_full_dev_shm_refuses_the_slot_and_leaves_no_segment(monkeypatch):
    """Reserved at alloc, so a full /dev/shm is an OSError there (the fetch then takes torch
    RPC), never a SIGBUS in the writer later."""
    import errno

    def full(fd, offset, size):
        raise OSError(errno.ENOSPC, "No space left on device")

    pool = shm.Pool(f"rlhfjob_t{os.getpid()}full_0_")
    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(OSError, match="No space"):
        pool.alloc(2**20)
    assert not [p for p in shm.SHM_ROOT.iterdir() if p.name.startswith(pool.prefix)]
    pool.close()
