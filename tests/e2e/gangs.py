"""What the end-to-end tests share: the small job's manifest and final weights, and the
namespace, pod runner and checkpoint claim the fixtures (of any scope) are made of."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from kubernetes import client as k8s
from podrunner import PodRunner

from cluster import Cluster, wait_until
from rlhfjob import checkpoint as ckpt

REPO = Path(__file__).resolve().parents[2]
# Passed on to pod processes: the session's marker, so that the suite's leftover check
# sees them, and PYTHONPATH, part of "this checkout" that every image stands for.
PASSED_ON = ("RLHFJOB_TEST_SESSION", "PYTHONPATH")
ENTRYPOINT = "tests/e2e/gangjob.py"  # relative: the pods' working directory is the repo
# Small and quick, but long enough to be killed in the middle of: a checkpoint every
# episode, so a restart resumes from any of them.
RUNTIME: dict[str, Any] = {
    "num_episode": 8,
    "sample_per_episode": 8,
    "generation_batch_size": 4,
    "train_micro_batch_size": 2,
    "train_global_batch_size": 4,
    "num_training_epoch": 2,
    "save_episode_interval": 1,
    "enable_resume_training": True,
    "data_checkpoint_path": "/checkpoints",
    "seed": 7,
    # Two worker processes and the driver: a kill of "a worker or the driver" has three
    # kinds of victim, and the gang starts quickly on two cores.
    "colocation": [["actor", "scorer"]],
}
# At least 0.1 s an episode (two batches of 0.05 s): time for a kill to land after a
# checkpoint, however fast the machine.
MODELS: dict[str, Any] = {
    "actor": {"args": {"pause": 0.05}},
    "scorer": {},
    "learner": {"trainable": True},
}


@dataclass(frozen=True)
class Checkpoints:
    """A PersistentVolumeClaim (``claim``) and the host directory behind it (``path``)."""

    claim: str
    path: Path


def gang_manifest(
    name: str, *, claim: str | None, args: list[str] | None = None, backoff_limit: int = 3
) -> dict[str, Any]:
    """The RLHFJob of the small job; checkpoints on ``claim`` (else an emptyDir)."""
    checkpoint: dict[str, Any] = {"mountPath": "/checkpoints"}
    if claim is not None:
        checkpoint["persistentVolumeClaim"] = {"claimName": claim, "subPath": name}
    return {
        "apiVersion": "rlhf.dev/v1alpha1",
        "kind": "RLHFJob",
        "metadata": {"name": name},
        "spec": {
            "image": "rlhfjob:dev",
            "entrypoint": {"file": ENTRYPOINT, "args": list(args or [])},
            "runtime": dict(RUNTIME),
            "models": dict(MODELS),
            "checkpoint": checkpoint,
            "runPolicy": {"backoffLimit": backoff_limit},
        },
    }


def final_weights(root: Path) -> dict[str, torch.Tensor]:
    """Every module's parameters and optimizer state in the newest complete checkpoint."""
    latest = ckpt.latest_checkpoint(root)
    assert latest is not None, f"no complete checkpoint under {root}"
    modules, _ = ckpt.load_checkpoint(latest)
    out: dict[str, torch.Tensor] = {}
    for name, saved in modules.items():
        state = saved["state"]
        for key, value in state.get("model", {}).items():
            out[f"{name}.model.{key}"] = value
        for index, slots in state.get("optimizer", {}).get("state", {}).items():
            for slot, value in slots.items():
                if isinstance(value, torch.Tensor):
                    out[f"{name}.optimizer.{index}.{slot}"] = value
    return out


def differing(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    """Keys whose tensors are not bitwise equal (or present in only one)."""
    keys = sorted(set(a) | set(b))
    return [k for k in keys if k not in a or k not in b or not torch.equal(a[k], b[k])]


def episode_of(root: Path) -> int:
    """The episode of the newest complete checkpoint, 0 when there is none."""
    latest = ckpt.latest_checkpoint(root)
    return 0 if latest is None else int(latest.name.split("_")[1])


@contextmanager
def running_pods(cluster: Cluster, *, grace: float = 5.0) -> Iterator[PodRunner]:
    """A PodRunner as the kubelet's handler; afterwards none of its processes may be
    left and the kubelet must have reported no error. ``grace``: at most this many
    seconds from a deleted pod's SIGTERM to its SIGKILL (PodRunner's)."""
    kubelet = cluster.kubelet
    assert kubelet is not None
    errors = len(kubelet.errors)
    runner = PodRunner(REPO, inherit=PASSED_ON, grace=grace)
    try:
        with kubelet.using(runner):
            yield runner
    finally:
        left = runner.running()
        runner.close()
    assert not left, f"pods still running afterwards: {left}"
    assert kubelet.errors[errors:] == []


@contextmanager
def checkpoint_claim(cluster: Cluster, namespace: str) -> Iterator[Checkpoints]:
    """A PersistentVolumeClaim bound (by the real controller-manager) to a hostPath
    PersistentVolume on a temp dir: checkpoints that outlive pods."""
    core = k8s.CoreV1Api(cluster.api_client)
    path = Path(tempfile.mkdtemp(prefix="rlhfjob-pv-"))
    pv = f"e2e-{uuid.uuid4().hex[:10]}"
    core.create_persistent_volume(
        {
            "metadata": {"name": pv},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteMany"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "",
                "hostPath": {"path": str(path), "type": "Directory"},
                # Only this claim may take it.
                "claimRef": {"namespace": namespace, "name": "checkpoints"},
            },
        }
    )
    try:
        core.create_namespaced_persistent_volume_claim(
            namespace,
            {
                "metadata": {"name": "checkpoints"},
                "spec": {
                    "accessModes": ["ReadWriteMany"],
                    "storageClassName": "",
                    "volumeName": pv,
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            },
        )
        wait_until(
            lambda: (
                core.read_namespaced_persistent_volume_claim("checkpoints", namespace).status.phase
                == "Bound"
            ),
            timeout=60,
            what="the checkpoint claim Bound (controller-manager's PV controller)",
        )
        yield Checkpoints("checkpoints", path)
    finally:
        core.delete_persistent_volume(pv)
        shutil.rmtree(path, ignore_errors=True)


def local_manifest(
    path: Path,
    name: str,
    ckpt_dir: Path,
    args: list[str],
    *,
    pause: float = 0.0,
    pause_restarted: float | None = None,
    **runtime: Any,
) -> Path:
    """The small job under ``rlhfjob run``; ``pause`` (seconds a batch) paces its episodes,
    ``pause_restarted`` those after a gang restart (the weights depend on neither),
    ``runtime`` overrides runtime keys."""
    manifest = gang_manifest(name, claim=None, args=args, backoff_limit=1)
    manifest["spec"]["entrypoint"]["file"] = str(REPO / "tests" / "e2e" / "gangjob.py")
    manifest["spec"]["runtime"]["data_checkpoint_path"] = str(ckpt_dir)
    manifest["spec"]["runtime"].update(runtime)
    if pause:
        paced = {"pause": pause} | (
            {} if pause_restarted is None else {"pause_restarted": pause_restarted}
        )
        manifest["spec"]["models"]["actor"] = {"args": paced}
    out = path / f"{name}.yaml"
    out.write_text(yaml.safe_dump(manifest))
    return out


def environ_of(pid: int) -> dict[str, str] | None:
    """The environment of live process ``pid``; None when it is gone, a zombie, or not
    readable."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except (OSError, IndexError):
        return None
    if state == "Z":
        return None
    pairs = (item.split("=", 1) for item in raw.decode(errors="replace").split("\0"))
    return {pair[0]: pair[1] for pair in pairs if len(pair) == 2}


def job_pids(job_name: str, role: str | None = None) -> dict[int, str]:
    """Live processes of ``job_name`` (with RLHFJOB_ROLE ``role``, or any): pid -> role,
    from their environment."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        environ = environ_of(int(entry.name))
        if environ is None or environ.get("RLHFJOB_JOB_NAME") != job_name:
            continue
        found_role = environ.get("RLHFJOB_ROLE")
        if found_role is not None and role in (None, found_role):
            found[int(entry.name)] = found_role
    return found


@contextmanager
def local_run(path: Path) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    """``rlhfjob run path`` (restart backoff 1 s) in a session of its own, and the list its
    stdout lines go into as they come. On exit a run still going is SIGKILLed, its whole
    process group, and reaped. The caller's ``proc.communicate()`` gets what the list's
    reader has not taken."""
    out: list[str] = []
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlhfjob_operator.cli", "run", str(path), "--backoff-base", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )

    def pump() -> None:
        # The caller's communicate() reads the same pipe and closes it when the run ends:
        # the lines it read are in what it returns.
        with contextlib.suppress(ValueError):
            out.extend(proc.stdout or ())

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        yield proc, out
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=30)
        reader.join(timeout=30)
