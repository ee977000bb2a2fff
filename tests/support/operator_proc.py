"""The real operator (``python -m rlhfjob_operator``) as a subprocess of a test, plus the
helpers the operator tests share: the CRD installed once, jobs applied with the real
kubectl, and bounded waits on what the API server says.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from cluster import Cluster, wait_until

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "rlhfjobs.rlhf.dev.yaml"
GROUP, VERSION, PLURAL = "rlhf.dev", "v1alpha1", "rlhfjobs"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Operator:
    """One operator process watching one namespace; stop() checks it exited cleanly.
    ``kubeconfig`` defaults to the cluster's admin one (a ServiceAccount's, to test RBAC);
    ``extra_args`` go after the test defaults, so a later flag wins."""

    def __init__(
        self,
        cluster: Cluster,
        namespace: str,
        *,
        backoff: float = 1.0,
        kubeconfig: Path | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.cluster = cluster
        self.extra_args = extra_args
        self.namespace = namespace
        self.backoff = backoff
        self.kubeconfig = kubeconfig or cluster.kubeconfig
        self.metrics_port = free_port()
        self._log_dir = Path(tempfile.mkdtemp(prefix="rlhfjob-operator-"))
        self.log_path = self._log_dir / "operator.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> Operator:
        assert self.proc is None
        self.starts += 1
        log = open(self.log_path, "ab")  # noqa: SIM115 (the child holds it)
        argv = [
            sys.executable,
            "-m",
            "rlhfjob_operator",
            "--kubeconfig",
            str(self.kubeconfig),
            "--namespace",
            self.namespace,
            "--standalone",
            "--metrics-host",
            "127.0.0.1",
            "--metrics-port",
            str(self.metrics_port),
            # Live progress in the status within a second: a test's jobs are short.
            "--progress-interval",
            "1",
            "--backoff-base",
            str(self.backoff),
            "--backoff-max",
            str(self.backoff * 4),
            *self.extra_args,
        ]
        # Stop signals blocked across exec (the child inherits the mask; the operator
        # unblocks them once its handler is installed): a stop() at any moment, even
        # during the interpreter's own start-up, reaches the operator's handler.
        # A TMPDIR of its own, as its pod's /tmp emptyDir: what a SIGKILLed operator
        # leaves there goes with cleanup().
        tmp = self._log_dir / f"tmp-{self.starts}"
        tmp.mkdir()
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        try:
            self.proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.cluster.env() | {"TMPDIR": str(tmp)},
                cwd=REPO,
                start_new_session=True,
            )
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            log.close()
        return self

    def kill(self) -> None:
        """SIGKILL: no chance to finish anything (what a crash or eviction does)."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM and wait; returns the exit code (SIGKILL after ``timeout``)."""
        if self.proc is None:
            return 0
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                return proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
                raise
        return int(proc.returncode)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def metrics(self) -> str:
        import urllib.request

        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5
        ) as resp:
            return str(resp.read().decode())

    def cleanup(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self._log_dir, ignore_errors=True)


@contextmanager
def running_operator(cluster: Cluster, namespace: str, **kwargs: Any) -> Iterator[Operator]:
    """An operator for the block; its log goes to stderr afterwards (pytest shows it when
    the test failed) and it must still be alive and exit 0 on SIGTERM."""
    op = Operator(cluster, namespace, **kwargs).start()
    try:
        yield op
        alive = op.proc is None or op.proc.poll() is None
        code = op.stop()
        assert alive, "the operator died during the test"
        assert code == 0, f"operator exited {code}"
    finally:
        sys.stderr.write(f"--- operator log (tail) ---\n{op.log()[-20000:]}\n")
        op.cleanup()


def install_crd(cluster: Cluster) -> None:
    cluster.kubectl_run("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    wait_established(cluster)


def wait_established(cluster: Cluster, *, timeout: float = 120.0) -> None:
    """Wait until the RLHFJob CRD is Established. On a loaded machine a fresh API server
    can answer one ``kubectl wait`` with an error (its watch dropped, apiextensions not
    serving yet): each attempt is retried until ``timeout``, and the TimeoutError names
    the last attempt's stderr."""

    def established() -> bool:
        proc = cluster.kubectl_run(
            "wait",
            "--for=condition=Established",
            "crd/rlhfjobs.rlhf.dev",
            "--timeout=20s",
            check=False,
            timeout=40,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"kubectl wait exited {proc.returncode}: {proc.stderr.strip()}")
        return True

    wait_until(established, timeout=timeout, what="the RLHFJob CRD Established", interval=1.0)


def apply(cluster: Cluster, namespace: str, manifest: dict[str, Any] | Path) -> None:
    """``kubectl apply -f`` a file or a manifest given as a dict (through stdin)."""
    if isinstance(manifest, Path):
        cluster.kubectl_run("apply", "-n", namespace, "-f", str(manifest))
    else:
        cluster.kubectl_run("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(manifest))


def get_json(cluster: Cluster, *args: str) -> Any:
    return json.loads(cluster.kubectl_run("get", *args, "-o", "json").stdout)


def job(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    return dict(get_json(cluster, "rlhfjob", name, "-n", namespace))


def pods(cluster: Cluster, namespace: str, name: str) -> list[dict[str, Any]]:
    return list(get_json(cluster, "pods", "-n", namespace, "-l", f"rlhf.dev/job={name}")["items"])


def wait_phase(
    cluster: Cluster, namespace: str, name: str, phase: str, *, timeout: float = 60
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj = job(cluster, namespace, name)
        got = (obj.get("status") or {}).get("phase")
        if got == "Failed" and phase != "Failed":
            raise AssertionError(f"job failed: {obj['status']}")
        return obj if got == phase else None

    return dict(
        wait_until(
            check, timeout=timeout, what=f"rlhfjob {name} phase {phase}", fatal=(AssertionError,)
        )
    )


def wait_for(predicate: Callable[[], Any], *, what: str, timeout: float = 60) -> Any:
    return wait_until(predicate, timeout=timeout, what=what, interval=0.2)


def events(cluster: Cluster, namespace: str, name: str) -> list[dict[str, Any]]:
    items = get_json(
        cluster,
        "events",
        "-n",
        namespace,
        "--field-selector",
        f"involvedObject.kind=RLHFJob,involvedObject.name={name}",
    )["items"]
    return list(items)


def elapsed_since(t0: float) -> float:
    return time.perf_counter() - t0
