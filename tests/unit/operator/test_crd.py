"""The checked-in CRD is what the models generate, and is a structural schema."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from rlhfjob_operator.crd import CRD_PATH, build_crd, render_crd

REPO = Path(__file__).resolve().parents[3]


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]")


def _schema() -> dict[str, Any]:
    return build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_checked_in_crd_matches_the_models() -> None:
    checked_in = (REPO / CRD_PATH).read_text()
    assert checked_in == render_crd(), "crds/ drifted from spec/: run `make crds`"


def test_module_entry_point_prints_the_crd() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "rlhfjob_operator.crd"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert yaml.safe_load(out.stdout)["metadata"]["name"] == "rlhfjobs.rlhf.dev"


def test_no_refs_titles_defaults_or_closed_objects() -> None:
    for path, node in _walk(_schema()):
        for banned in ("$ref", "$defs", "title", "default", "anyOf", "allOf", "oneOf"):
            assert banned not in node, f"{banned} at {path}"
        assert node.get("additionalProperties") is not False, path


def test_unknown_fields_are_kept_only_in_free_form_args() -> None:
    # args, and Kubernetes' own pod types passed through whole (the API server checks
    # them when the pod is created): a volume's source, affinity, an env var's valueFrom.
    kept = [p for p, node in _walk(_schema()) if node.get("x-kubernetes-preserve-unknown-fields")]
    passed = (".volumes.items", ".affinity", ".valueFrom")
    assert [p for p in kept if not p.endswith(passed)] == [
        ".properties.spec.properties.models.additionalProperties.properties.args"
    ]
    assert len(kept) == 1 + 3 * 3 + 1  # 3 in podTemplate, driver, models.<name>.pod; spec.env


def test_every_node_has_a_type() -> None:
    for path, node in _walk(_schema()):
        if (
            path.endswith(".properties")
            or path.endswith("x-kubernetes-validations")
            or ("x-kubernetes-validations[" in path)
        ):
            continue
        if "enum" in node or "x-kubernetes-int-or-string" in node or "rule" in node:
            continue
        if path.endswith("x-kubernetes-list-map-keys"):
            continue
        assert "type" in node, f"no type at {path}"


def test_versions_columns_and_status_subresource() -> None:
    crd = build_crd()
    assert crd["spec"]["group"] == "rlhf.dev"
    assert crd["spec"]["names"]["kind"] == "RLHFJob"
    (version,) = crd["spec"]["versions"]
    assert version["name"] == "v1alpha1" and version["storage"]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns == {
        "Phase": ".status.phase",
        "Episode": ".status.episode",
        "Reward": ".status.reward",
        "ETA": ".status.progress.eta",
        "Restarts": ".status.restarts",
        "Disruptions": ".status.disruptions",
        "Age": ".metadata.creationTimestamp",
    }


def test_immutable_fields_carry_transition_rules() -> None:
    spec = _schema()["properties"]["spec"]["properties"]
    for name in ("entrypoint", "image", "runtime", "models", "checkpoint", "podTemplate", "env"):
        rules = [r["rule"] for r in spec[name].get("x-kubernetes-validations", [])]
        assert "self == oldSelf" in rules, name
    # runPolicy is mutable; placement is, while suspended (a rule on spec, for Kueue).
    for name in ("runPolicy", "nodeSelector", "tolerations"):
        assert "x-kubernetes-validations" not in spec[name], name


def test_cross_field_rules_are_present() -> None:
    spec = _schema()["properties"]["spec"]
    messages = " ".join(r["message"] for r in spec["x-kubernetes-validations"])
    for text in ("colocation", "num_replica x generation_batch_size", "spec.env", "driver"):
        assert text in messages
    runtime = spec["properties"]["runtime"]["x-kubernetes-validations"]
    assert any("multiple" in r["message"] for r in runtime)


def test_gpu_resource_comes_from_num_gpu() -> None:
    model = _schema()["properties"]["spec"]["properties"]["models"]["additionalProperties"]
    assert model["properties"]["num_gpu"] == {
        "description": "GPUs per replica.",
        "minimum": 0,
        "type": "integer",
    }
