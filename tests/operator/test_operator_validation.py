"""The real API server refuses malformed RLHFJobs with the CRD's schema and CEL rules,
naming the field, through the real kubectl (strict field validation, its default)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import yaml
from malformed import CASES, Case, base_manifest
from operator_proc import install_crd

from cluster import Cluster
from rlhfjob_operator.spec import load_job

SERVER_CASES = [c for c in CASES if c.where == "both"]


@pytest.fixture(scope="module")
def validation_ns(control_plane: Cluster) -> Iterator[str]:
    install_crd(control_plane)
    with control_plane.namespace("v-") as name:
        yield name


def test_enough_cases_reach_the_api_server() -> None:
    assert len(SERVER_CASES) >= 20


def test_the_base_manifest_is_accepted(control_plane: Cluster, validation_ns: str) -> None:
    control_plane.kubectl_run(
        "apply", "-n", validation_ns, "-f", "-", input=yaml.safe_dump(base_manifest("good"))
    )


def test_a_job_without_models_is_accepted_as_pydantic_accepts_it(
    control_plane: Cluster, validation_ns: str
) -> None:
    """The spec's CEL rules read spec.models only when it is there: a rule that read an
    absent field would fail, and the API server refuse what pydantic accepts."""
    manifest = base_manifest("no-models")
    del manifest["spec"]["models"]
    load_job(manifest)
    control_plane.kubectl_run(
        "apply", "-n", validation_ns, "-f", "-", input=yaml.safe_dump(manifest)
    )


@pytest.mark.parametrize("case", SERVER_CASES, ids=[c.id for c in SERVER_CASES])
def test_api_server_refuses_naming_the_field(
    control_plane: Cluster, validation_ns: str, case: Case
) -> None:
    name = f"bad-{abs(hash(case.id)) % 10**8}"
    manifest = case.manifest(name)
    if case.id == "job-name-too-long":
        manifest = case.manifest("j" * 51)
    proc = control_plane.kubectl_run(
        "apply", "-n", validation_ns, "-f", "-", input=yaml.safe_dump(manifest), check=False
    )
    assert proc.returncode != 0, f"accepted: {case.id}"
    assert case.field in proc.stderr, proc.stderr
    assert "rlhfjob" in proc.stderr.lower() or "invalid" in proc.stderr.lower(), proc.stderr
