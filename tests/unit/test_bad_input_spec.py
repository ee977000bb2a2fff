"""Generated bad specs and configs: pydantic refuses every one with a SpecError naming the
field, never another exception, never a silent acceptance of what the rules forbid.

- every mutation of tests/support/mutations.py (the CRD schema's own constraints,
  broken one field at a time; the API server test sends the same ones to kube-apiserver);
- hypothesis: random values at any field of a full job (accepted, or refused naming
  that field), values that are wrong for sure, random model names;
- hypothesis: ChatLearn's batch rules against an oracle written from DESIGN.md.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mutations import MUTATIONS, Path_, full_manifest, leaves, set_path, spec_schema

from rlhfjob_operator.spec import MODEL_NAME_PATTERN, SpecError, load_job, load_job_config

SETTINGS = settings(
    max_examples=80,
    deadline=None,
    derandomize=True,  # the same examples on every machine: CI failures reproduce
    database=None,  # and no .hypothesis/ directory left in the checkout
    suppress_health_check=[HealthCheck.too_slow],
)
LEAVES: list[tuple[Path_, dict[str, Any]]] = [
    (path, schema) for path, schema, _ in leaves(spec_schema(), full_manifest()["spec"], ("spec",))
]


def field_of(path: Path_) -> str:
    return next(str(p) for p in reversed(path) if isinstance(p, str))


def refusal(manifest: dict[str, Any]) -> str | None:
    """The SpecError's message, or None when the manifest is valid; any other exception
    propagates and fails the test."""
    try:
        load_job(manifest)
    except SpecError as exc:
        return str(exc)
    return None


def test_every_schema_mutation_is_refused_naming_the_field(bad_inputs: Any) -> None:
    assert refusal(full_manifest()) is None
    wrong = []
    for mutation in MUTATIONS:
        message = refusal(mutation.manifest())
        if message is None or mutation.field not in message:
            wrong.append(f"{mutation.id}: {message}")
    assert not wrong, "\n".join(wrong)
    bad_inputs.refused("manifest, generated", len(MUTATIONS))


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


def test_random_values_anywhere_are_accepted_or_refused_naming_the_field(bad_inputs: Any) -> None:
    refused: set[str] = set()

    @SETTINGS
    @given(st.sampled_from(LEAVES), JSONISH)
    def check(leaf: tuple[Path_, dict[str, Any]], value: Any) -> None:
        path, _ = leaf
        m = copy.deepcopy(full_manifest())
        set_path(m, path, value)
        message = refusal(m)
        if message is None:
            return
        assert field_of(path) in message, (path, value, message)
        refused.add(json.dumps([list(path), repr(value)]))

    check()
    assert len(refused) >= 40
    bad_inputs.refused("manifest, generated", len(refused))


def _surely_wrong(schema: dict[str, Any]) -> st.SearchStrategy[Any] | None:
    """Values the schema forbids whatever they are, or None when none is simple to draw."""
    kind = schema.get("type")
    text = st.text(min_size=1, max_size=10)
    if kind == "integer":
        below = (
            [st.integers(max_value=schema["minimum"] - 1, min_value=-(2**31))]
            if "minimum" in schema
            else []
        )
        words = text.filter(lambda s: not re.fullmatch(r"\s*[-+]?[\d_]+\s*", s))
        return st.one_of(words, st.lists(st.integers(), max_size=2), *below)
    if kind == "boolean":
        # pydantic also takes 0/1 and these words; anything else is refused.
        known = {"0", "1", "true", "false", "yes", "no", "on", "off", "t", "f", "y", "n"}
        return text.filter(lambda s: s.strip().lower() not in known) | st.integers(2, 99)
    if kind == "string" and "enum" in schema:
        return text.filter(lambda s: s not in schema["enum"])
    if kind == "string" and "pattern" in schema:
        return text.filter(lambda s: not re.search(schema["pattern"], s))
    return None


WRONG = [(p, s, w) for p, s in LEAVES if (w := _surely_wrong(s)) is not None]


def test_values_the_schema_forbids_are_always_refused(bad_inputs: Any) -> None:
    refused: set[str] = set()

    @SETTINGS
    @given(st.data())
    def check(data: st.DataObject) -> None:
        path, _, strategy = data.draw(st.sampled_from(WRONG))
        value = data.draw(strategy)
        m = copy.deepcopy(full_manifest())
        set_path(m, path, value)
        message = refusal(m)
        assert message is not None, f"{path} = {value!r} accepted"
        assert field_of(path) in message, (path, value, message)
        refused.add(json.dumps([list(path), repr(value)]))

    check()
    assert len(refused) >= 40
    bad_inputs.refused("manifest, generated", len(refused))


def test_model_names_follow_the_pattern_or_are_refused_naming_them(bad_inputs: Any) -> None:
    refused: set[str] = set()

    @SETTINGS
    @given(st.text(min_size=1, max_size=45))
    def check(name: str) -> None:
        m = copy.deepcopy(full_manifest())
        models = m["spec"]["models"]
        # A new name that gives an existing model's pod names clashes; an existing one
        # is only replaced.
        clash = name not in models and name.replace("_", "-") in {
            k.replace("_", "-") for k in models
        }
        models[name] = {}
        message = refusal(m)
        # fullmatch: the API server's RE2 lets no trailing newline through "$".
        fine = re.fullmatch(MODEL_NAME_PATTERN, name) is not None and name != "driver" and not clash
        assert (message is None) == fine, (name, message)
        if message is not None:
            assert "models" in message, message
            refused.add(name)

    check()
    bad_inputs.refused("manifest, generated", len(refused))


# --- ChatLearn's rules, against an oracle -------------------------------------------

SMALL = st.integers(1, 24)


def chatlearn_problems(
    runtime: dict[str, int], replicas: dict[str, tuple[int, int | None]]
) -> set[str]:
    """The fields DESIGN.md's rules say are wrong (global batch not a multiple of micro,
    global batch > sample_per_episode, generation batch > sample_per_episode, replicas x
    generation batch > sample_per_episode)."""
    spe, gen = runtime["sample_per_episode"], runtime["generation_batch_size"]
    micro = runtime["train_micro_batch_size"]
    glob = runtime.get("train_global_batch_size") or micro
    wrong = set()
    if glob % micro:
        wrong.add("train_micro_batch_size")
    if glob > spe:
        wrong.add("train_global_batch_size")
    if gen > spe:
        wrong.add("generation_batch_size")
    for name, (n, own) in replicas.items():
        if n * (own or gen) > spe:
            wrong.add(f"models.{name}")
    return wrong


def test_chatlearn_batch_rules_match_the_oracle(bad_inputs: Any) -> None:
    refused: set[str] = set()

    @SETTINGS
    @given(
        st.fixed_dictionaries(
            {
                "sample_per_episode": SMALL,
                "generation_batch_size": SMALL,
                "train_micro_batch_size": SMALL,
            },
            optional={"train_global_batch_size": st.integers(1, 48)},
        ),
        st.dictionaries(
            st.sampled_from(["policy", "value", "reward"]),
            st.tuples(st.integers(1, 6), st.none() | st.integers(1, 8)),
            max_size=3,
        ),
    )
    def check(runtime: dict[str, int], replicas: dict[str, tuple[int, int | None]]) -> None:
        models: dict[str, dict[str, int]] = {}
        for name, (n, own) in replicas.items():
            models[name] = {"num_replica": n, **({"generation_batch_size": own} if own else {})}
        expected = chatlearn_problems(runtime, replicas)
        try:
            load_job_config({"runtime": runtime, "models": models})
        except SpecError as exc:
            message = str(exc)
            assert expected, f"refused what the rules allow: {runtime} {models}: {message}"
            # pydantic reports the first broken rule: it must be one the oracle found.
            assert any(field in message for field in expected), (expected, message)
            refused.add(json.dumps([runtime, models], sort_keys=True))
            return
        assert not expected, f"accepted {runtime} {models}, which breaks {expected}"

    check()
    assert len(refused) >= 20
    bad_inputs.refused("config, ChatLearn rules", len(refused))


@pytest.mark.parametrize("bad", [3, 4.5, [1, 2]])
def test_a_config_that_is_no_mapping_is_refused(bad: Any, bad_inputs: Any) -> None:
    with pytest.raises(SpecError, match="config must be a dict, a YAML path or a JobConfig"):
        load_job_config(bad)
    bad_inputs.refused("config or manifest file")
