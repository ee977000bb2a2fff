"""The RLHFJob type: examples validate, malformed manifests are refused naming the field,
and the runtime's load_job_config keeps working for bare {runtime, models} configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from malformed import CASES, Case, base_manifest

from rlhfjob_operator.spec import (
    JobConfig,
    RLHFJob,
    SpecError,
    load_job,
    load_job_config,
)

REPO = Path(__file__).resolve().parents[3]

EXAMPLES = sorted((REPO / "examples" / "k8s").glob("*.yaml"))


def test_there_are_enough_malformed_cases() -> None:
    assert len(CASES) >= 20
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_are_valid(path: Path) -> None:
    job = load_job(path)
    assert job.kind == "RLHFJob"
    assert job.spec.models


def test_base_manifest_is_valid() -> None:
    load_job(base_manifest())


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malformed_manifest_is_refused_naming_the_field(case: Case) -> None:
    with pytest.raises(SpecError) as info:
        load_job(case.manifest())
    assert case.field in str(info.value), str(info.value)


def test_error_paths_start_at_the_manifest_root() -> None:
    m = base_manifest()
    m["spec"]["models"]["policy"]["num_replica"] = 0
    with pytest.raises(SpecError, match=r"spec\.models\.policy\.num_replica"):
        load_job(m)


def test_camel_case_on_the_wire_snake_case_in_python() -> None:
    m = base_manifest()
    m["spec"]["runPolicy"] = {"backoffLimit": 7, "ttlSecondsAfterFinished": 60}
    m["spec"]["nodeSelector"] = {"pool": "gpu"}
    job = load_job(m)
    assert job.spec.run_policy.backoff_limit == 7
    assert job.spec.node_selector == {"pool": "gpu"}
    dumped = job.manifest()["spec"]
    assert dumped["runPolicy"]["ttlSecondsAfterFinished"] == 60
    assert "run_policy" not in dumped
    # The ChatLearn sections keep their keys.
    assert dumped["runtime"]["train_micro_batch_size"] == 4


def test_manifest_round_trips() -> None:
    job = load_job(REPO / "examples" / "k8s" / "ppo-sort.yaml")
    again = load_job(yaml.safe_load(yaml.safe_dump(job.manifest())))
    assert again.spec == job.spec


def test_defaults() -> None:
    job = load_job(base_manifest())
    assert job.spec.run_policy.backoff_limit == 3
    assert job.spec.run_policy.suspend is False
    assert job.spec.checkpoint.mount_path == "/checkpoints"
    assert job.spec.checkpoint.persistent_volume_claim is None
    assert job.namespace == "default"


def test_load_job_config_takes_a_whole_manifest(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(base_manifest()))
    config = load_job_config(path)
    assert isinstance(config, JobConfig)
    assert config.models["policy"].num_replica == 2
    assert config.runtime.train_global_batch_size == 8


def test_load_job_config_validates_the_whole_manifest() -> None:
    m = base_manifest()
    del m["spec"]["image"]
    with pytest.raises(SpecError, match=r"spec\.image"):
        load_job_config(m)


def test_load_job_config_still_takes_bare_sections() -> None:
    config = load_job_config({"runtime": {"num_episode": 3}, "models": {"policy": {}}})
    assert config.runtime.num_episode == 3
    assert config.model("policy").num_replica == 1
    with pytest.raises(SpecError, match="num_episode"):
        load_job_config({"runtime": {"num_episode": 0}})


def test_load_job_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="does not exist"):
        load_job(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(SpecError, match="mapping"):
        load_job(tmp_path / "list.yaml")


def test_model_pod_settings_are_camel_case() -> None:
    m = base_manifest()
    m["spec"]["models"]["policy"]["pod"] = {
        "nodeSelector": {"pool": "a"},
        "resources": {"requests": {"memory": "4Gi"}},
    }
    job = RLHFJob.model_validate(m)
    pod = job.spec.models["policy"].pod
    assert pod is not None and pod.node_selector == {"pool": "a"}
    m["spec"]["models"]["policy"]["pod"] = {"resources": {"requests": {"memory": "lots"}}}
    with pytest.raises(SpecError, match="memory"):
        load_job(m)


def test_status_parses_what_the_operator_writes() -> None:
    m = base_manifest()
    m["status"] = {
        "phase": "Running",
        "conditions": [{"type": "Running", "status": "True", "reason": "PodsRunning"}],
        "models": {"policy": {"replicas": 2, "ready": 2}},
        "restarts": 1,
        "restartGeneration": 2,
        "episode": 3,
    }
    job = load_job(m)
    assert job.status is not None
    cond = job.status.condition("Running")
    assert cond is not None and cond.status == "True"
    assert job.status.models["policy"].ready == 2


@pytest.mark.parametrize("value", ["4Gi\n", "500m\n"])
def test_a_quantity_with_a_trailing_newline_is_refused(value: str) -> None:
    # re.match's $ matches before a final newline; the pod's creation would fail later.
    from rlhfjob_operator.spec.base import check_quantity

    with pytest.raises(ValueError, match="is not a Kubernetes quantity"):
        check_quantity(value)
    assert check_quantity(value.strip()) == value.strip()
