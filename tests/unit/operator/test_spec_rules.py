"""Each cross-field Rule's two sides agree: the CEL the API server runs (evaluated here by
cel-python, whose regexes are RE2 as in the API server) and the Python check pydantic runs.

Objects are generated as the API server would store them (wire keys, no defaults, every
value within its field's schema) and broken or not by chance; the Python side sees the
same object built the way pydantic builds it, its children validated and its own rules
not run. A rule whose sides disagree on one object fails with that object. Every rule
must also be seen both holding and broken, so that a strategy that never reaches a
rule's edge fails instead of passing quietly.

Transition rules (``oldSelf``) have no Python side; every CEL rule of the CRD, those
included, must compile.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from functools import cache
from typing import Any

import celpy
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, TypeAdapter, ValidationError

import rlhfjob_operator.spec as spec
from rlhfjob_operator.crd import build_crd
from rlhfjob_operator.spec import (
    CheckpointSpec,
    Entrypoint,
    EnvFromSource,
    EnvVar,
    ExitCodes,
    FailureRule,
    JobConfig,
    PodSettings,
    ResourceRequirements,
    RLHFJobSpec,
    Rule,
    RuntimeSpec,
    SchedulingPolicy,
    Toleration,
)

SETTINGS = settings(
    max_examples=500,
    deadline=None,
    derandomize=True,  # the same examples on every machine
    database=None,  # no .hypothesis/ directory left in the checkout
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
_ENV = celpy.Environment()


@cache
def _program(cel: str) -> Any:
    return _ENV.program(_ENV.compile(cel))


def cel_holds(rule: Rule[Any], wire: dict[str, Any]) -> bool:
    result = _program(rule.cel).evaluate({"self": celpy.json_to_cel(wire)})
    assert isinstance(result, celpy.celtypes.BoolType), (rule.cel, wire, result)
    return bool(result)


def build(cls: type[BaseModel], wire: dict[str, Any]) -> BaseModel:
    """``cls`` from its wire form, each field validated on its own and cls's own validators
    (its rules) not run; a child that its own rules refuse rejects the example."""
    values = {}
    for name, field in cls.model_fields.items():
        key = field.alias or name
        if key in wire:
            try:
                values[key] = TypeAdapter(field.annotation).validate_python(wire[key])
            except ValidationError:
                assume(False)
    return cls.model_construct(**values)


def _optional(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Dicts with any subset of ``fields``: absent is how the API server sees a default."""
    return st.fixed_dictionaries({}, optional=fields)


_COLOCATION = st.lists(
    st.lists(st.sampled_from(["policy", "reference", "reward"]), max_size=3), max_size=3
)
_RUNTIME = _optional(
    sample_per_episode=st.integers(1, 24),
    num_inference_per_prompt=st.integers(1, 6),
    generation_batch_size=st.integers(1, 24),
    train_micro_batch_size=st.integers(1, 12),
    train_global_batch_size=st.integers(1, 48),
    save_episode_interval=st.integers(1, 5),
    data_checkpoint_path=st.sampled_from(["", "/ckpt"]),
    colocation=_COLOCATION,
)
_MODEL_NAMES = st.sampled_from(
    ["policy", "reference", "reward", "ppo_policy", "driver", "Critic", "a\n", "-x", "x" * 41]
)
_MODELS = st.dictionaries(
    _MODEL_NAMES,
    _optional(
        num_replica=st.integers(1, 4),
        generation_batch_size=st.integers(1, 8),
        sync_frequency=st.sampled_from([1, 1, 2]),
    ),
    max_size=4,
)
# A runtime that is valid on its own, so that the rules across sections are reached.
_SECTION_RUNTIME = _optional(
    sample_per_episode=st.integers(4, 24),
    generation_batch_size=st.integers(1, 4),
    colocation=st.sampled_from(
        [
            [],
            [["policy", "reference"]],
            [["policy", "reward"], ["reference", "critic"]],
            [["reference", "ppo_policy", "reward"]],
        ]
    ),
    max_staleness=st.integers(0, 2),
)
_SECTIONS = _optional(runtime=_SECTION_RUNTIME, models=_MODELS)
_ENV_VARS = st.lists(
    st.fixed_dictionaries(
        {"name": st.sampled_from(["RANK", "LOCAL_RANK", "FOO", "RLHFJOB_ROLE", "MY_RLHFJOB"])}
    ),
    max_size=3,
)
_QUANTITIES = st.dictionaries(
    st.sampled_from(["memory", "cpu", "nvidia.com/gpu"]), st.sampled_from(["4Gi", 2]), max_size=2
)

_EXIT_CODES = st.builds(
    lambda op, values, role: {"operator": op, "values": values, **role},
    st.sampled_from(["In", "NotIn"]),
    st.lists(st.sampled_from([0, 1, 3, 78]), min_size=1, max_size=3),
    _optional(role=st.sampled_from(["driver", "policy", "reward", "critic"])),
)
_FAILURE_POLICY = _optional(
    rules=st.lists(
        st.builds(lambda codes: {"action": "FailJob", "onExitCodes": codes}, _EXIT_CODES),
        max_size=3,
    )
)

# Every model with rules, and objects of it as the API server would see them.
CASES: dict[type[BaseModel], st.SearchStrategy[dict[str, Any]]] = {
    RuntimeSpec: _RUNTIME,
    JobConfig: _SECTIONS,
    RLHFJobSpec: st.builds(
        lambda s, env: {**s, **env},
        _SECTIONS,
        _optional(env=_ENV_VARS, runPolicy=_optional(failurePolicy=_FAILURE_POLICY)),
    ),
    ExitCodes: _EXIT_CODES,
    FailureRule: _optional(
        onExitCodes=_EXIT_CODES, onPodConditions=st.just([{"type": "DisruptionTarget"}])
    ),
    ResourceRequirements: _optional(requests=_QUANTITIES, limits=_QUANTITIES),
    Toleration: _optional(
        operator=st.sampled_from(["Exists", "Equal"]),
        value=st.sampled_from(["", "x"]),
        effect=st.sampled_from(["NoSchedule", "PreferNoSchedule", "NoExecute"]),
        tolerationSeconds=st.integers(0, 60),
    ),
    Entrypoint: _optional(
        file=st.just("a.py"),
        module=st.just("a.b"),
        engine=st.sampled_from(["grpo", "ppo"]),
        args=st.lists(st.just("--x"), max_size=1),
    ),
    CheckpointSpec: _optional(
        emptyDir=st.just({}), persistentVolumeClaim=st.just({"claimName": "c"})
    ),
    SchedulingPolicy: _optional(
        minAvailable=st.integers(1, 8),
        podGroup=st.sampled_from([{"kind": "volcano"}, {"kind": "coscheduling"}]),
    ),
    EnvVar: st.builds(
        lambda rest: {"name": "A", **rest},
        _optional(value=st.sampled_from(["", "x"]), valueFrom=st.just({"secretKeyRef": {}})),
    ),
    EnvFromSource: _optional(
        prefix=st.sampled_from(["", "HF_", "RLHFJOB_", "X_RLHFJOB_"]),
        secretRef=st.just({"name": "hub"}),
        configMapRef=st.just({"name": "cfg"}),
    ),
    PodSettings: _optional(
        env=_ENV_VARS,
        volumes=st.lists(st.sampled_from([{"name": "weights"}, {"name": "tmp"}]), max_size=2),
        volumeMounts=st.lists(
            st.sampled_from(["/weights", "/tmp", "/dev/shm/x", "/etc/rlhfjob"]).map(
                lambda path: {"name": "weights", "mountPath": path}
            ),
            max_size=2,
        ),
        labels=st.dictionaries(
            st.sampled_from(["team", "rlhf.dev/job", "app.kubernetes.io/name", "x/rlhf.dev"]),
            st.just("x"),
        ),
        annotations=st.dictionaries(
            st.sampled_from(["team", "rlhf.dev/models", "app.kubernetes.io/name"]), st.just("x")
        ),
    ),
}


def _checked(cls: type[BaseModel]) -> list[Rule[Any]]:
    return [rule for rule in getattr(cls, "rules", ()) if rule.holds is not None]


def test_every_model_with_rules_is_generated() -> None:
    ruled = {
        obj
        for obj in vars(spec).values()
        if isinstance(obj, type) and issubclass(obj, BaseModel) and getattr(obj, "rules", ())
    }
    assert ruled == set(CASES)
    assert sum(len(_checked(cls)) for cls in (RuntimeSpec, RLHFJobSpec)) >= 11


@pytest.mark.parametrize("cls", list(CASES), ids=lambda cls: cls.__name__)
def test_cel_and_python_agree(cls: type[BaseModel]) -> None:
    seen: dict[int, set[bool]] = defaultdict(set)
    rules = _checked(cls)

    @SETTINGS
    @given(CASES[cls])
    def check(wire: dict[str, Any]) -> None:
        obj = build(cls, wire)
        for index, rule in enumerate(rules):
            assert rule.holds is not None
            python = rule.holds(obj)
            assert cel_holds(rule, wire) == python, (rule.message, wire)
            seen[index].add(python)
            if not python:  # pydantic's message is built from the broken object
                with pytest.raises(ValueError):
                    rule.check(obj)

    check()
    one_sided = [rules[i].message for i in range(len(rules)) if seen[i] != {True, False}]
    assert not one_sided, f"never seen both holding and broken: {one_sided}"


def _crd_rules(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for entry in node.get("x-kubernetes-validations", []):
            yield entry["rule"]
        for value in node.values():
            yield from _crd_rules(value)
    elif isinstance(node, list):
        for value in node:
            yield from _crd_rules(value)


def test_every_crd_rule_compiles() -> None:
    rules = set(_crd_rules(build_crd()))
    assert len(rules) >= 20
    for cel in rules:
        _program(cel)


def _transition_holds(cel: str, new: dict[str, Any], old: dict[str, Any]) -> bool:
    env = {"self": celpy.json_to_cel(new), "oldSelf": celpy.json_to_cel(old)}
    return bool(_program(cel).evaluate(env))


_ZONE = {"nodeSelector": {"zone": "a"}}
_TAINT = {"tolerations": [{"key": "gpu", "operator": "Exists"}]}


@pytest.mark.parametrize(
    ("old", "new", "allowed"),
    [
        ({}, _ZONE, False),  # running: Kueue may not move the pods
        ({"runPolicy": {"suspend": True}}, {"runPolicy": {"suspend": True}, **_ZONE}, True),
        ({"runPolicy": {"suspend": True}}, {**_ZONE, **_TAINT}, True),  # admission: unsuspend
        ({**_ZONE, **_TAINT}, {"runPolicy": {"suspend": True}}, True),  # eviction: restore
        ({"runPolicy": {"suspend": False}, **_ZONE}, {**_ZONE, "runPolicy": {}}, True),
        ({**_TAINT}, {"tolerations": []}, False),  # an empty list is no tolerations
        ({"nodeSelector": {}}, {}, True),
    ],
)
def test_placement_changes_only_while_suspended(
    old: dict[str, Any], new: dict[str, Any], allowed: bool
) -> None:
    rules = [r for r in RLHFJobSpec.rules if "may change only while" in r.message]
    assert [r.field_path for r in rules] == [".nodeSelector", ".tolerations"]
    assert all(r.holds is None for r in rules)  # only the API server sees oldSelf
    assert all(_transition_holds(r.cel, new, old) for r in rules) == allowed
