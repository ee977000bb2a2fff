"""Peers without the job's secret, with real worker processes: refused, nothing of theirs
unpickled, the job itself unharmed, no process left behind.

The gang (driver and one worker, tests/runtime/authjob.py) is started by hand
with the same environment `rlhfjob run` gives it, so a test can put a stranger
in between: a real worker with the wrong secret, a raw store client writing
pickles into the rendezvous, a TensorPipe agent calling a worker's RPC port.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import pickle
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
import torch.distributed as dist
import yaml

from conftest import write_job
from rlhfjob.comm.env import WorkerEnv
from rlhfjob.comm.signing import SignedStore, job_key
from rlhfjob_operator.contract import ENV_JOB_SECRET
from rlhfjob_operator.local import free_port
from rlhfjob_operator.plan import JobPlan, Worker, plan_job
from rlhfjob_operator.spec import load_job

HERE = Path(__file__).resolve().parent
RUNTIME = dict(
    num_episode=2,
    sample_per_episode=8,
    generation_batch_size=4,
    train_micro_batch_size=4,
    train_global_batch_size=4,
)
# One worker hosting all three toy models: the smallest gang there is.
MODELS = {"actor": {}, "scorer": {}, "learner": {"trainable": True}}
COLOCATED = {**RUNTIME, "colocation": [["actor", "scorer", "learner"]]}
SECRET = "right-" + "s" * 37
WRONG = "wrong-" + "w" * 37
TIMEOUT = 180


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float = TIMEOUT) -> int:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"hung past {timeout}s; its log:\n{self.text()[-3000:]}") from None


class Gang:
    """The plan of a job file; starts its processes one by one, kills what is left."""

    def __init__(self, tmp_path: Path, name: str, args: list[str] | None = None) -> None:
        path = write_job(tmp_path, name, COLOCATED, MODELS, entry="authjob.py")
        if args:
            manifest = yaml.safe_load(path.read_text())
            manifest["spec"]["entrypoint"]["args"] = args
            path.write_text(yaml.safe_dump(manifest))
        self.path, self.tmp = path, tmp_path
        self.plan: JobPlan = plan_job(load_job(path), master_port=free_port())
        self.procs: list[Proc] = []

    @property
    def driver(self) -> Worker:
        return self.plan.workers[0]

    @property
    def worker(self) -> Worker:
        return self.plan.workers[1]

    def start(
        self,
        worker: Worker,
        *,
        secret: str,
        tag: str,
        command: list[str] | None = None,
        extra: dict[str, str] | None = None,
    ) -> Proc:
        env = dict(os.environ)
        env.update(
            self.plan.env(
                worker,
                master_addr="127.0.0.1",
                spec_path=str(self.path),
                checkpoint_dir="",
                restart_generation=0,
                metrics_port=0,
            )
        )
        env.update(
            {
                ENV_JOB_SECRET: secret,
                "PYTHONUNBUFFERED": "1",
                "GLOO_SOCKET_IFNAME": "lo",
                "TP_SOCKET_IFNAME": "lo",
                **(extra or {}),
            }
        )
        log = self.tmp / f"{tag}.log"
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                [sys.executable, *(command or ["-m", "rlhfjob.worker"])],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = Proc(popen, log)
        self.procs.append(proc)
        return proc

    def wait_for_store(self) -> None:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.plan.master_port), timeout=1),
            ):
                return
            time.sleep(0.1)
        raise AssertionError("the driver's rendezvous never listened")

    def kill(self) -> None:
        for proc in self.procs:
            if proc.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.popen.pid, signal.SIGKILL)
            proc.popen.wait(timeout=30)


@pytest.fixture
def gang(tmp_path: Path, job_name: str) -> Iterator[Gang]:
    g = Gang(tmp_path, job_name)
    try:
        yield g
    finally:
        g.kill()


def listening_on(port: int) -> set[str]:
    """The local addresses with a TCP socket listening on ``port`` (Linux /proc/net)."""
    found = set()
    for table, size in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        with contextlib.suppress(FileNotFoundError), open(table) as rows:
            for row in list(rows)[1:]:
                local, state = row.split()[1], row.split()[3]
                host, hex_port = local.split(":")
                if state == "0A" and int(hex_port, 16) == port and len(host) == size:
                    raw = bytes.fromhex(host)
                    # /proc/net prints each 32-bit word in host (little-endian) order.
                    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                    found.add(str(ipaddress.ip_address(words)))
    return found


def wait_for(predicate, what: str, timeout: float = TIMEOUT) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_a_worker_with_the_wrong_secret_is_refused_and_the_job_still_runs(
    gang: Gang, bad_inputs
) -> None:
    driver = gang.start(gang.driver, secret=SECRET, tag="driver")
    gang.wait_for_store()
    # A local job's rendezvous listens on loopback only (TCPStore alone takes every interface).
    assert listening_on(gang.plan.master_port) == {"127.0.0.1"}
    rogue = gang.start(gang.worker, secret=WRONG, tag="rogue")
    assert rogue.wait() == 75, rogue.text()[-3000:]
    assert "the driver's record at the rendezvous" in rogue.text()
    assert f"is not signed with this process's {ENV_JOB_SECRET}" in rogue.text()
    wait_for(lambda: "refused a rendezvous record for rank 1" in driver.text(), "the refusal")
    assert f"pid {rogue.popen.pid} on" in driver.text(), driver.text()[-3000:]
    bad_inputs.refused("rendezvous")

    worker = gang.start(gang.worker, secret=SECRET, tag="worker")
    assert driver.wait() == 0, driver.text()[-3000:]
    assert worker.wait() == 0, worker.text()[-3000:]
    assert driver.text().count("episode ") >= 2


class _Payload:
    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[object, tuple[str, ...]]:
        return (os.mknod, (self.path,))


def test_pickles_a_stranger_writes_into_the_rendezvous_are_refused_unopened(
    gang: Gang, tmp_path: Path, bad_inputs
) -> None:
    driver = gang.start(gang.driver, secret=SECRET, tag="driver")
    gang.wait_for_store()
    name = gang.worker.hostname
    # Where rank 1 would put its record and its gloo and RPC addresses, written first.
    keys = [
        "peer/1",
        "pg/0//cpu//0/1",
        "rpc/rpc_prefix_0/0/1",
        "rpc/rpc_prefix_0/names/1",
        f"rpc/rpc_prefix_0/addrs/{name}",
    ]
    stranger = dist.TCPStore(
        "127.0.0.1", gang.plan.master_port, is_master=False, timeout=timedelta(seconds=30)
    )
    markers = []
    for index, key in enumerate(keys):
        marker = tmp_path / f"unpickled-{index}"
        stranger.set(key, pickle.dumps(_Payload(marker)))
        markers.append(marker)
    wait_for(lambda: "refused a rendezvous record for rank 1" in driver.text(), "the refusal")
    assert "bytes that are no rlhfjob peer record" in driver.text()

    worker = gang.start(gang.worker, secret=SECRET, tag="worker")
    assert driver.wait() == 0, driver.text()[-3000:]
    assert worker.wait() == 0, worker.text()[-3000:]
    # peer/1 was read (and refused) before the worker existed. Whether the driver reads the
    # stranger's value under the other keys before the worker's real one replaces it is a
    # race either side may win; in either order nothing of his is unpickled and any value
    # refused is one of his. tests/unit/test_rendezvous_signing.py orders that race.
    refused = re.findall(r"refused the value of rendezvous key '([^']+)'", driver.text())
    assert set(refused) <= set(keys[1:]), refused
    assert not [m.name for m in markers if m.exists()]
    bad_inputs.refused("rendezvous", len(keys))
    del stranger


def test_a_stranger_calling_a_workers_rpc_port_gets_nothing_unpickled(
    tmp_path: Path, job_name: str, bad_inputs
) -> None:
    go = tmp_path / "go"
    gang = Gang(tmp_path, job_name, args=["--hold", str(go)])
    try:
        driver = gang.start(gang.driver, secret=SECRET, tag="driver")
        worker = gang.start(gang.worker, secret=SECRET, tag="worker")
        wait_for(lambda: "authjob: holding" in driver.text(), "the gang to meet")
        marker = tmp_path / "unpickled"
        rogue = subprocess.run(
            [
                sys.executable,
                str(HERE / "rogue_rpc.py"),
                str(gang.plan.master_port),
                gang.worker.hostname,
                str(marker),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert "rogue: the call failed" in rogue.stdout, rogue.stdout + rogue.stderr[-3000:]
        assert "refused this RPC message" in rogue.stdout
        assert not marker.exists()
        wait_for(lambda: "refused an RPC message of" in worker.text(), "the worker's report")
        bad_inputs.refused("rpc")

        go.touch()
        assert driver.wait() == 0, driver.text()[-3000:]
        assert worker.wait() == 0, worker.text()[-3000:]
    finally:
        gang.kill()


def test_a_process_without_the_secret_will_not_start(gang: Gang, bad_inputs) -> None:
    for secret, message in (
        ("", f"environment variable {ENV_JOB_SECRET} is not set"),
        ("short", f"environment variable {ENV_JOB_SECRET} has 5 characters"),
    ):
        proc = gang.start(gang.worker, secret=secret, tag=f"no-secret-{len(secret)}")
        assert proc.wait() == 78, proc.text()[-3000:]
        assert message in proc.text()
        assert "Traceback" not in proc.text()
        bad_inputs.refused("env contract")


def test_a_process_of_an_earlier_gang_is_refused_and_the_driver_gives_up_in_time(
    gang: Gang, bad_inputs
) -> None:
    """Same secret, older restart generation (what a leftover pod of a restarted gang has):
    its record does not verify; it stops at once, the driver after its startup timeout,
    naming it; both with the retryable exit."""
    meet = [str(HERE / "meet.py"), "8"]
    stale = gang.start(
        gang.worker,
        secret=SECRET,
        tag="stale",
        command=meet,
        extra={"RLHFJOB_RESTART_GENERATION": "1"},
    )
    driver = gang.start(gang.driver, secret=SECRET, tag="driver", command=meet)
    assert stale.wait() == 75, stale.text()[-3000:]
    assert "the driver's record at the rendezvous" in stale.text()
    assert driver.wait() == 75, driver.text()[-3000:]
    text = driver.text()
    assert "ranks [1] of 2 did not reach the rendezvous" in text, text[-3000:]
    assert f"rank 1: claiming to be {gang.worker.hostname}, pid {stale.popen.pid}" in text
    assert "Traceback" not in text + stale.text()
    bad_inputs.refused("rendezvous")


def test_a_forged_value_where_gloo_looks_ends_the_startup_cleanly(
    gang: Gang, tmp_path: Path, bad_inputs
) -> None:
    """The test plays the driver's half of the rendezvous (it knows the secret) and forges
    rank 0's gloo address: the worker refuses it after its patience, naming the key, and
    exits retryable; no traceback, no hang, and the forged pickle is never opened."""
    port = gang.plan.master_port
    tcp = dist.TCPStore(
        "127.0.0.1", port, 2, is_master=True, timeout=timedelta(seconds=60), wait_for_workers=False
    )
    env = WorkerEnv.from_environ(
        {
            **gang.plan.env(
                gang.driver,
                master_addr="127.0.0.1",
                spec_path=str(gang.path),
                checkpoint_dir="",
                restart_generation=0,
            ),
            ENV_JOB_SECRET: SECRET,
        }
    )
    signed = SignedStore(tcp, job_key(env, "rendezvous"), patience=0, name="t")
    record = dict(
        rank=0, name="driver", role="driver", replica=0, models=[], pid=1, host="h", cuda=False
    )
    signed.set("peer/0", json.dumps(record).encode())
    marker = tmp_path / "unpickled"
    key = "pg/0//cpu//0/0"
    tcp.set(key, pickle.dumps(_Payload(marker)))
    worker = gang.start(
        gang.worker, secret=SECRET, tag="worker", command=[str(HERE / "meet.py"), "5"]
    )
    try:
        assert worker.wait() == 75, worker.text()[-3000:]
    finally:
        del signed, tcp
    text = worker.text()
    assert f"refused the value of rendezvous key '{key}'" in text, text[-3000:]
    assert "starting gloo and RPC stopped" in text and "Traceback" not in text
    assert not marker.exists()
    bad_inputs.refused("rendezvous")
