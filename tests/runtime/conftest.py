"""Multi-process runtime tests: real worker processes, real RPC, nothing left behind."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import jobfiles
import pytest
import torch
import yaml

from rlhfjob import checkpoint as ckpt

HERE = Path(__file__).resolve().parent


def final_models(root: Path) -> dict[str, torch.Tensor]:
    """Every module's model weights in the latest checkpoint under ``root``, by
    ``<module>.<parameter>``."""
    modules, _ = ckpt.load_checkpoint(ckpt.latest_checkpoint(root))
    return {
        f"{name}.{key}": value
        for name, saved in modules.items()
        for key, value in saved["state"].get("model", {}).items()
    }


def worker_pids(job: str) -> list[int]:
    """Live processes whose environment names ``job`` as their RLHFJOB_JOB_NAME."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            status = (entry / "status").read_text()
        except OSError:
            continue
        if f"RLHFJOB_JOB_NAME={job}".encode() in environ.split(b"\0") and "zombie" not in status:
            pids.append(int(entry.name))
    return pids


def write_job(
    tmp_path: Path, name: str, runtime: dict, models: dict, entry: str = "toyjob.py"
) -> Path:
    """A job of ``entry`` (a file of tests/runtime), no restarts."""
    return jobfiles.write_job(tmp_path, name, runtime, models, HERE / entry)


def shortened(
    source: Path, tmp_path: Path, job: str, where: str, runtime: dict, **spec: object
) -> Path:
    """The example manifest ``source`` as job ``job``: its runtime updated with
    ``runtime``, checkpoints under ``tmp_path/where``, the ``spec`` keys set, no
    restarts; written to ``tmp_path/<where>.yaml``."""
    manifest = yaml.safe_load(source.read_text())
    manifest["metadata"]["name"] = job
    manifest["spec"]["runtime"].update(runtime, data_checkpoint_path=str(tmp_path / where))
    manifest["spec"].update(spec, runPolicy={"backoffLimit": 0})
    path = tmp_path / f"{where}.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def rlhfjob_run(path: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rlhfjob_operator.cli", "run", str(path), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def job_name(request):
    """A unique job name; the test fails if any of its processes outlive it."""
    name = f"t{os.getpid()}-{request.node.name[:30].replace('_', '-').lower()}".rstrip("-")
    name = "".join(c if c.isalnum() or c == "-" else "-" for c in name)[:50].rstrip("-")
    yield name
    deadline = time.monotonic() + 10
    while worker_pids(name) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = worker_pids(name)
    for pid in left:
        os.kill(pid, 9)
    assert not left, f"processes left behind by job {name}: {left}"
