"""RLHFJob manifests written to a file for ``rlhfjob run`` (the local launcher), as a
user writes one: an entrypoint file, the runtime and models sections, a backoff limit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def write_job(
    tmp_path: Path,
    name: str,
    runtime: dict[str, Any],
    models: dict[str, Any],
    entry: Path,
    *,
    backoff_limit: int = 0,
) -> Path:
    """``tmp_path/<name>.yaml``: job ``name`` running ``entry`` (an absolute path)."""
    manifest = {
        "apiVersion": "rlhf.dev/v1alpha1",
        "kind": "RLHFJob",
        "metadata": {"name": name},
        "spec": {
            "image": "rlhfjob:dev",
            "entrypoint": {"file": str(entry)},
            "runtime": runtime,
            "models": models,
            "runPolicy": {"backoffLimit": backoff_limit},
        },
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path
