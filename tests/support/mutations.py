"""Bad RLHFJob manifests generated from the CRD's own schema, for pydantic and the API server.

:func:`full_manifest` is a valid job that sets every field of the schema
(colocation aside: its rules span fields; entrypoint.file and .engine aside: only one
form may be set, and it sets .module; see malformed.py for those). :data:`MUTATIONS`
breaks it one field at a time, for every field, with what the schema says
cannot be there: the wrong type, a number below its minimum or above its
maximum, a fraction for an integer, a string outside its enum or its pattern,
an empty string where one is required, a key no object has. Each names the
field the refusal must name, and who must refuse it ("both", or "pydantic"
for Kubernetes quantities, which the CRD passes as int-or-string).

The unit tests (hypothesis) pick from these and from random values at the
same fields; tests/operator/test_bad_input_apiserver.py sends every "both"
one to the real API server.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from malformed import Manifest, base_manifest

CRD = Path(__file__).resolve().parents[2] / "crds" / "rlhfjobs.rlhf.dev.yaml"
# Not schema fields: their keys are the user's (model_args) or the map's own.
_FREE_FORM = {("spec", "models", "policy", "args")}
Path_ = tuple[str | int, ...]


def spec_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    return dict(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"])


def _tolerations() -> list[dict[str, Any]]:
    return [{"key": "gpu", "operator": "Equal", "value": "a100", "effect": "NoExecute",
             "tolerationSeconds": 30}]  # fmt: skip


def _pod() -> dict[str, Any]:
    return {
        "image": "ghcr.io/rlhfjob/runtime:0.1.0",
        "resources": {"requests": {"memory": "1Gi"}, "limits": {"memory": "2Gi"}},
        "nodeSelector": {"pool": "a"},
        "tolerations": _tolerations(),
        "serviceAccountName": "trainer",
        "imagePullSecrets": [{"name": "registry"}],
        "env": [
            {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hub", "key": "token"}}}
        ],
        "envFrom": [{"prefix": "S3_", "secretRef": {"name": "s3", "optional": True}}],
        "volumes": [{"name": "weights", "persistentVolumeClaim": {"claimName": "weights"}}],
        "volumeMounts": [
            {"name": "weights", "mountPath": "/models", "subPath": "llama", "readOnly": True}
        ],
        "affinity": {"nodeAffinity": {}},
        "labels": {"team": "rl"},
        "annotations": {"example.com/owner": "rl"},
        "priorityClassName": "high",
    }


def full_manifest(name: str = "full") -> Manifest:
    """A valid job with every field of the schema set."""
    m = base_manifest(name)
    spec = m["spec"]
    spec["entrypoint"] = {"module": "examples.ppo_sort", "args": ["--seed", "1"]}
    spec["imagePullPolicy"] = "IfNotPresent"
    spec["runtime"].update(
        num_training_epoch=1,
        save_episode_interval=1,
        eval_episode_interval=1,
        enable_eval_before_training=False,
        data_shuffle=True,
        data_path="/data/train.jsonl",
        eval_data_path="/data/eval.parquet",
        prompt_key="question",
        data_checkpoint_path="/checkpoints/run",
        enable_resume_training=True,
        stream_data_loader_type="fixed",
        max_replay_episode=0,
        coalesced_buffer_mb=100,
        seed=7,
    )
    spec["models"]["policy"].update(
        num_cpu=1,
        trainable=False,
        generation_batch_size=4,
        sync_frequency=1,
        args={"model_path": "/models/p"},
        pod=_pod(),
    )
    spec["driver"] = _pod()
    spec["podTemplate"] = _pod()
    spec["nodeSelector"] = {"zone": "b"}
    spec["tolerations"] = _tolerations()
    spec["env"] = [{"name": "HF_HOME", "value": "/tmp/hf"}]
    spec["checkpoint"] = {
        "mountPath": "/checkpoints",
        "persistentVolumeClaim": {"claimName": "shared", "subPath": "full"},
    }
    spec["runPolicy"] = {
        "backoffLimit": 2,
        "activeDeadlineSeconds": 3600,
        "ttlSecondsAfterFinished": 60,
        "suspend": False,
        "terminationGracePeriodSeconds": 60,
    }
    return m


@dataclass(frozen=True)
class Mutation:
    """``path`` (from the manifest root) set to ``value``; the refusal names ``field``."""

    path: Path_
    kind: str
    value: Any
    field: str
    where: Literal["both", "pydantic"] = "both"

    @property
    def id(self) -> str:
        return f"{'.'.join(map(str, self.path))}:{self.kind}"

    def manifest(self, name: str = "bad") -> Manifest:
        m = copy.deepcopy(full_manifest(name))
        set_path(m, self.path, self.value)
        return m


def set_path(m: Any, path: Path_, value: Any) -> None:
    node = m
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


# Strings tried in turn against a pattern: the first it refuses is used.
_AGAINST_PATTERNS = ("!! not this !!", "/absolute", "UPPER.case", "a b")


def _violates(pattern: str) -> str:
    value = next(v for v in _AGAINST_PATTERNS if not re.search(pattern, v))
    return value


def leaves(schema: dict[str, Any], value: Any, path: Path_) -> Iterator[tuple[Path_, Any, Any]]:
    """(path, schema node, current value) for every node of ``value`` the schema types."""
    yield path, schema, value
    if path in _FREE_FORM:
        return
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, sub in value.items():
            if props is not None and key in props:
                yield from leaves(props[key], sub, (*path, key))
            elif isinstance(extra, dict):
                yield from leaves(extra, sub, (*path, key))
    elif isinstance(value, list) and "items" in schema:
        for index, sub in enumerate(value):
            yield from leaves(schema["items"], sub, (*path, index))


def _field(path: Path_) -> str:
    """The name a refusal of ``path`` must contain: its last key (list indexes skipped)."""
    return next(str(p) for p in reversed(path) if isinstance(p, str))


def mutations_of(path: Path_, schema: dict[str, Any]) -> Iterator[Mutation]:
    name = _field(path)
    kind = schema.get("type")
    if schema.get("x-kubernetes-int-or-string"):
        # A quantity: the CRD takes any string, pydantic checks its form.
        yield Mutation(path, "not-a-quantity", "lots", name, where="pydantic")
        yield Mutation(path, "wrong-type", [1], name)
        return
    if kind == "integer":
        yield Mutation(path, "wrong-type", "seven", name)
        yield Mutation(path, "fraction", 1.5, name)
        if "minimum" in schema:
            yield Mutation(path, "below-minimum", schema["minimum"] - 1, name)
        if "maximum" in schema:
            yield Mutation(path, "above-maximum", schema["maximum"] + 1, name)
    elif kind == "boolean":
        yield Mutation(path, "wrong-type", "maybe", name)
    elif kind == "string":
        yield Mutation(path, "wrong-type", 5, name)
        if "enum" in schema:
            yield Mutation(path, "not-in-enum", "Sometimes", name)
        if "pattern" in schema:
            yield Mutation(path, "against-pattern", _violates(schema["pattern"]), name)
        if schema.get("minLength"):
            yield Mutation(path, "empty", "", name)
    elif kind == "array":
        yield Mutation(path, "wrong-type", "not-a-list", name)
    elif kind == "object" and path not in _FREE_FORM:
        yield Mutation(path, "wrong-type", ["not", "a", "map"], name)
        # A Kubernetes type passed through whole (a volume's source) keeps unknown keys.
        closed = not schema.get("x-kubernetes-preserve-unknown-fields")
        if "properties" in schema and "additionalProperties" not in schema and closed:
            yield Mutation((*path, "bogusKey"), "unknown-key", 1, "bogusKey")


def all_mutations() -> list[Mutation]:
    m = full_manifest()
    out = [
        mutation
        for path, schema, _ in leaves(spec_schema(), m["spec"], ("spec",))
        for mutation in mutations_of(path, schema)
    ]
    assert len({x.id for x in out}) == len(out)
    return out


MUTATIONS: list[Mutation] = all_mutations()
