"""What the end-to-end tests share: the small job's manifest, its final weights, waits."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlhfjob import checkpoint as ckpt

REPO = Path(__file__).resolve().parents[2]
ENTRYPOINT = "tests/e2e/gangjob.py"  # relative: the pods' working directory is the repo
# Small and quick, but long enough to be killed in the middle of: a checkpoint every
# episode, so a restart resumes from any of them.
RUNTIME: dict[str, Any] = {
    "num_episode": 6,
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
MODELS: dict[str, Any] = {"actor": {}, "scorer": {}, "learner": {"trainable": True}}


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
