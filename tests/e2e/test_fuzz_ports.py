"""A stranger's bytes on every listening port of a job under ``rlhfjob run`` (issue 18).

While the small job trains (a checkpoint every episode), every TCP port its processes
listen on gets, at once, 64 random bytes, a header claiming 2**62 bytes, and a header
cut short, from two kinds of stranger:

1. from 127.0.0.2, an address no process of the job published at the signed
   rendezvous, standing for a pod outside the job: every port but the metrics one
   (served to anyone on purpose) must refuse it before a byte is read
   (``rlhfjob.comm.admission``: its SYN is dropped), so nothing happens to the job;
2. from 127.0.0.1, where every process of one host comes from (admitted: the residual
   risk SECURITY.md names), port after port, plus a control-channel handshake with
   another job's secret. A port whose process dies for it ends the sweep (the gang
   goes down with it): the launcher names the abort and restarts the gang from the
   newest checkpoint, once.

Either way the job must end with the weights of an undisturbed run, bitwise. The
per-port outcome is printed, never timed.
"""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from gangs import differing, environ_of, final_weights, job_pids, local_manifest, local_run
from operator_proc import wait_for
from strangers import (
    LOCAL,
    STRANGER,
    UNREAD,
    job_ports,
    labelled,
    listening_inodes,
    other_job,
    payloads_of,
    probe,
    sweep,
)

from cluster import wait_until


def _restarted(job: str, before: int) -> bool:
    """Whether a new driver of ``job`` (not pid ``before``) serves its metrics."""
    for pid in job_pids(job, "driver"):
        if pid != before:
            with contextlib.suppress(OSError, KeyError, ValueError):
                metrics = next(p for p, what in _driver_ports(pid).items() if what == "metrics")
                return metrics in {port for _, _, port in listening_inodes(pid).values()}
    return False


def _ended_unaborted(
    proc: subprocess.Popen[str], inside: dict[Any, Any], ports: dict[Any, Any]
) -> bool:
    """False while the job runs; an AssertionError once it ended with no restart (no
    probe aborted a process before its last episode): the test cannot go on."""
    if proc.poll() is None:
        return False
    raise AssertionError(
        f"rlhfjob run ended (exit {proc.returncode}) before the gang restarted: the loopback "
        f"sweep probed {len(inside)} of {len(ports)} ports and none aborted a process"
    )


def _driver_ports(pid: int) -> dict[int, str]:
    """The driver's metrics and rendezvous ports, from its environment (KeyError when
    it is gone)."""
    environ = environ_of(pid) or {}
    return {int(environ["RLHFJOB_METRICS_PORT"]): "metrics", int(environ["MASTER_PORT"]): "store"}


def test_a_strangers_bytes_on_every_port_leave_the_weights_of_an_undisturbed_run(
    tmp_path: Path, uninterrupted: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    seed = random.randrange(2**32)
    payloads = payloads_of(random.Random(seed))
    name, ckpt_dir = f"e2e-fuzz-{os.getpid()}", tmp_path / "ckpt"
    # 8 s episodes (2 batches of 4 s): both sweeps land while it trains. The loopback sweep
    # takes up to 2.5 s a port (12 ports), and the first port that aborts can be the last.
    # After the restart, 4 s episodes: the last probes take about 2 s, all at once.
    path = local_manifest(tmp_path, name, ckpt_dir, [], pause=4.0, pause_restarted=2.0)
    with local_run(path) as (proc, out):
        wait_for(
            lambda: any(line.startswith("episode 1/") for line in out),
            what="episode 1 done",
            timeout=300,
        )
        ports = job_ports(name)
        (driver,) = {pid for role, pid in ports.values() if role == "driver"}
        named = _driver_ports(driver)
        metrics = next(port for port, what in named.items() if what == "metrics")
        # 1. From an address the job did not publish: every port at once.
        with ThreadPoolExecutor(8) as pool:
            outside = dict(
                zip(
                    ports,
                    pool.map(lambda p: sweep(p, STRANGER, payloads), ports),
                    strict=True,
                )
            )
        survived = all(environ_of(pid) is not None for _, pid in ports.values())
        # 2. From loopback (admitted on one host), port after port: random bytes, then the
        # oversized header, until a process of the gang dies of one.
        inside: dict[int, list[str]] = {}
        for port in sorted(ports, key=lambda t: (t[1] not in named, t)):
            if not all(environ_of(pid) is not None for _, pid in ports.values()):
                break
            inside[port] = [probe(port, LOCAL, payload) for payload in payloads[:2]]
            time.sleep(0.5)  # an abort takes its process down within moments
        # 3. The restarted gang, once its driver serves metrics (the episode loop began):
        # another job's control-channel handshake and the cut-short header, every port at
        # once. Neither aborts a process.
        wait_until(
            lambda: _restarted(name, driver) or _ended_unaborted(proc, inside, ports),
            what="the restarted gang",
            timeout=300,
            fatal=(AssertionError,),
        )
        again = job_ports(name)
        named.update(_driver_ports(*{pid for role, pid in again.values() if role == "driver"}))
        with ThreadPoolExecutor(8) as pool:
            later = dict(
                zip(
                    again,
                    pool.map(lambda p: [other_job(p), probe(p, LOCAL, payloads[2])], again),
                    strict=True,
                )
            )
        _, err = proc.communicate(timeout=300)
    aborted = {pid for _, pid in ports.values() if f"pid {pid}) was killed by SIGABRT" in err}
    restarts = [line for line in err.splitlines() if "restarting the gang" in line]
    diff = differing(uninterrupted, final_weights(ckpt_dir))
    with capsys.disabled():
        print(f"\n  rlhfjob run, seed {seed}: {len(ports)} listening ports, then {len(again)}")
        for port, (role, pid) in sorted(ports.items()):
            what = f"{role}/{named[port[1]]}" if port[1] in named else role
            tail = "; ".join(labelled(inside[port])) if port in inside else "gang down: not sent"
            if port in inside and pid in aborted and port == max(inside, key=list(inside).index):
                tail += ": ITS PROCESS ABORTED (gang restarted)"
            print(f"    {port[1]} {what:14} from {STRANGER}: {'; '.join(labelled(outside[port]))}")
            print(f"    {'':20} from {LOCAL}: {tail}")
        print("  after the restart, from 127.0.0.1:")
        for port, (role, _) in sorted(again.items()):
            what = f"{role}/{named[port[1]]}" if port[1] in named else role
            print(f"    {port[1]} {what:14} {later[port][0]}; truncated {later[port][1]}")
        same = "identical weights" if not diff else "DIFFERENT weights"
        print(f"  {restarts}; {same}")
    assert proc.returncode == 0, err[-3000:]
    assert survived, "a stranger refused at the kernel still killed a process"
    for port, seen in outside.items():
        if port[1] != metrics:
            assert set(seen) <= UNREAD, (port, ports[port], seen)
    # One abort (TensorPipe's listener, on random bytes or the oversized header), named,
    # and one restart from the newest checkpoint.
    assert len(aborted) == 1 and len(restarts) == 1, err[-3000:]
    assert "native code aborted" in err, err[-3000:]
    assert "restarting the gang from episode " in restarts[0], err[-3000:]
    refused = [port for port, seen in later.items() if seen[0] == "other job's proof: closed"]
    assert len(refused) == 2, later  # the two workers' control channels
    assert not any("ACCEPTED" in seen[0] for seen in later.values())
    assert diff == []
