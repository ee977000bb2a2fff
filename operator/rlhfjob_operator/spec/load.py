"""Reading jobs and configs: SpecError messages that name every bad field by its path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from rlhfjob_operator.spec.base import SpecError
from rlhfjob_operator.spec.chatlearn import from_chatlearn
from rlhfjob_operator.spec.job import RLHFJob
from rlhfjob_operator.spec.runtime import JobConfig

__all__ = ["format_validation_error", "load_job", "load_job_config"]


def format_validation_error(error: ValidationError, *, root: str = "") -> str:
    """One line per problem, each naming the dotted field path and what is wrong."""
    lines = []
    for item in error.errors():
        path = ".".join(str(p) for p in item["loc"])
        path = f"{root}.{path}" if root and path else (root or path)
        msg = item["msg"]
        if item["type"] == "extra_forbidden":
            msg = "unknown key; remove it or check its spelling"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        lines.append(f"{path}: {msg}" if path else msg)
    return "\n".join(lines)


def load_job_config(config: JobConfig | dict[str, Any] | str | Path | None) -> JobConfig:
    """Validate ``config`` (typed, dict, or YAML path) into a JobConfig.

    A YAML file or dict may be a bare ``{runtime, models}`` document or a whole
    RLHFJob manifest (it has ``kind``), which is then validated as an RLHFJob
    (entrypoint, image and all) and its ``spec`` gives the two sections. A bare
    document may use ChatLearn's spellings (``spec.chatlearn``). Raises
    SpecError with every problem named by its field path; a missing file names
    the path.
    """
    if config is None:
        return JobConfig()
    if isinstance(config, JobConfig):
        return config
    if isinstance(config, (str, Path)):
        config = _read_yaml(Path(config), what="config")
    if not isinstance(config, dict):
        raise SpecError(
            f"config must be a dict, a YAML path or a JobConfig, not {type(config).__name__}"
        )
    if "kind" in config:
        return load_job(config).spec.config
    try:
        return JobConfig.model_validate(from_chatlearn(config))
    except ValidationError as exc:
        raise SpecError("invalid job config:\n" + format_validation_error(exc)) from exc


def load_job(manifest: RLHFJob | dict[str, Any] | str | Path) -> RLHFJob:
    """Validate a whole RLHFJob manifest (typed, dict, or YAML path).

    Raises SpecError naming every bad field by its path from the manifest root
    (``spec.models.policy.num_replica: ...``); a missing file names the path.
    """
    if isinstance(manifest, RLHFJob):
        return manifest
    if isinstance(manifest, (str, Path)):
        manifest = _read_yaml(Path(manifest), what="manifest")
    if not isinstance(manifest, dict):
        raise SpecError(f"an RLHFJob manifest is a mapping, not {type(manifest).__name__}")
    try:
        return RLHFJob.model_validate(manifest)
    except ValidationError as exc:
        name = (manifest.get("metadata") or {}).get("name", "?")
        raise SpecError(f"invalid RLHFJob {name!r}:\n" + format_validation_error(exc)) from exc


def _read_yaml(path: Path, *, what: str) -> Any:
    if not path.is_file():
        raise SpecError(f"{what} file {str(path)!r} does not exist")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SpecError(f"{what} file {str(path)!r} is not valid YAML: {exc}") from exc
    if not isinstance(loaded, dict):
        raise SpecError(f"{what} file {str(path)!r} must hold a mapping, not {loaded!r}")
    return loaded
