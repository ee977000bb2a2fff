"""The one cluster of a test session, shared by every test directory that asks."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .control_plane import ControlPlane
from .handle import Cluster
from .paths import missing_binaries, tools_bin_dir


class Missing(Exception):
    """What a session needs is not built or installed; the message says what to run."""


_shared_lock = threading.Lock()
_shared: dict[str, Any] = {"cluster": None, "users": 0, "close": None}


@contextlib.contextmanager
def session_cluster() -> Iterator[Cluster]:
    """The cluster of this test session, shared by every test directory that asks
    (tests/operator, tests/e2e): the one KUBECONFIG names, else our control plane on
    loopback, started by the first caller and stopped when the last is done.

    Raises Missing when binaries are missing (run make cluster-bin).
    RLHFJOB_CLUSTER_LOGS=<dir> keeps the components' logs there.
    """
    with _shared_lock:
        if _shared["cluster"] is None:
            _shared["cluster"], _shared["close"] = _open_session_cluster()
        _shared["users"] += 1
        cluster = _shared["cluster"]
    try:
        yield cluster
    finally:
        with _shared_lock:
            _shared["users"] -= 1
            if _shared["users"] == 0:
                close, _shared["cluster"], _shared["close"] = _shared["close"], None, None
                close()


def _open_session_cluster() -> tuple[Cluster, Callable[[], None]]:
    external = os.environ.get("KUBECONFIG")
    if external:
        tools = [p for p in missing_binaries() if p.parent == tools_bin_dir()]
        if tools and not all(shutil.which(p.name) for p in tools):
            raise Missing(f"missing {', '.join(map(str, tools))}: run make cluster-bin")
        home = Path(tempfile.mkdtemp(prefix="rlhfjob-tools-"))
        try:
            cluster = Cluster.from_kubeconfig(Path(external), home)
        except BaseException:
            shutil.rmtree(home, ignore_errors=True)
            raise

        def close_external() -> None:
            try:
                cluster.api_client.close()
            finally:
                shutil.rmtree(home, ignore_errors=True)

        return cluster, close_external
    missing = missing_binaries()
    if missing:
        raise Missing(f"missing {', '.join(map(str, missing))}: run make cluster-bin")
    logs = os.environ.get("RLHFJOB_CLUSTER_LOGS")  # keep component logs for debugging
    cp = ControlPlane(keep_logs_in=Path(logs) if logs else None)
    return cp.start(), cp.stop
