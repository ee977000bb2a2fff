"""The tally of bad inputs the tests feed rlhfjob, printed at the end of the run:

    bad inputs: 312 tried, 312 refused with a message
      42  manifest, pydantic            refused by load_job: rlhfjob run/validate, the operator
      ...

A bad input counts as refused when its test saw it refused with a message naming
what to fix (the test's own asserts check that; no traceback, no hang). Two ways in:

- the ``bad_inputs`` fixture: ``bad_inputs.refused(category, n)`` after a test
  checked ``n`` refusals of one category;
- tests written before the tally: :data:`COUNTED` names them (one input per
  parametrized case, or the number of inputs the test body tries).

A test that fails counts its inputs as tried, not refused.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

# After every test: no stray process, listening port, temp dir or /dev/shm segment.
pytest_plugins = ["leftovers"]

# PYTHONPATH as it was before pytest_configure.
_OLD_PYTHONPATH = pytest.StashKey[str | None]()


def pytest_configure(config: pytest.Config) -> None:
    """Put the ini's ``pythonpath`` (tests/support) on PYTHONPATH too: the processes
    tests start (``rlhfjob run`` workers importing ``toys``, the e2e pods, which pass
    PYTHONPATH on) import the shared helpers by name as the tests do. An existing
    PYTHONPATH (runtime/ and operator/ of this checkout) is kept after them; the
    old value comes back at unconfigure."""
    config.stash[_OLD_PYTHONPATH] = os.environ.get("PYTHONPATH")
    paths = [str(p) for p in config.getini("pythonpath")]
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [*paths, *filter(None, [os.environ.get("PYTHONPATH")])]
    )


def pytest_unconfigure(config: pytest.Config) -> None:
    if _OLD_PYTHONPATH not in config.stash:
        return
    old = config.stash[_OLD_PYTHONPATH]
    if old is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = old


# category -> who refuses it
CATEGORIES = {
    "manifest, pydantic": "load_job (rlhfjob run, rlhfjob validate, the operator)",
    "manifest, API server": "kube-apiserver: the CRD's schema and CEL rules",
    "manifest, generated": "load_job (the schema mutations also go to the API server)",
    "spec, operator": "the operator: phase Failed, condition InvalidSpec, a Warning Event",
    "config, ChatLearn rules": "load_job_config / Engine(config=...)",
    "config or manifest file": "load_job / load_job_config: the path named",
    "flow": "Environment/Trainer/Evaluator at construction (FlowError, with the line)",
    "engine": "Engine and learn() before any model runs",
    "entrypoint": "the worker: exit 78 and a message (rlhfjob run / the pod)",
    "model path": "the Hugging Face adapter / the module's setup()",
    "checkpoint": "resume and load_checkpoint, earlier checkpoints kept",
    "env contract": "WorkerEnv.from_environ: exit 78 naming the variable",
    "rendezvous": "comm.rendezvous/signing: the record or value refused, naming it",
    "rpc": "comm.rpc_pickles' signed RPC pickler: refused unopened",
}

# node id (without parameters) -> (category, inputs per test item)
COUNTED: dict[str, tuple[str, int]] = {
    "tests/unit/operator/test_job_spec.py::test_malformed_manifest_is_refused_naming_the_field": (
        "manifest, pydantic",
        1,
    ),
    "tests/unit/operator/test_job_spec.py::test_load_job_errors_name_the_file": (
        "config or manifest file",
        2,
    ),
    "tests/operator/test_operator_validation.py::test_api_server_refuses_naming_the_field": (
        "manifest, API server",
        1,
    ),
    "tests/operator/test_operator_lifecycle.py::test_a_spec_only_pydantic_refuses_fails_with_a_reason": (  # noqa: E501
        "spec, operator",
        1,
    ),
    "tests/unit/test_config.py::test_bad_config_is_refused_naming_the_key": (
        "config, ChatLearn rules",
        1,
    ),
    "tests/unit/test_config.py::test_yaml_path_and_manifest": ("config or manifest file", 4),
    "tests/unit/test_config.py::test_cli_validate": ("config or manifest file", 1),
    "tests/unit/test_flow.py::test_branch_on_model_output_names_function_and_line": ("flow", 1),
    "tests/unit/test_flow.py::test_using_an_output_as_a_value_is_refused": ("flow", 1),
    "tests/unit/test_flow.py::test_returning_a_non_output_is_refused": ("flow", 2),
    "tests/unit/test_flow.py::test_calling_a_model_on_a_foreign_value_is_refused": ("flow", 1),
    "tests/unit/test_flow.py::test_value_from_another_trace_is_refused": ("flow", 1),
    "tests/unit/test_flow.py::test_same_method_twice_is_refused": ("flow", 1),
    "tests/unit/test_flow.py::test_flow_without_model_calls_and_bad_arity": ("flow", 2),
    "tests/unit/test_flow.py::test_keyword_inputs_and_no_inputs_are_refused": ("flow", 2),
    "tests/unit/test_engine.py::test_fixed_loader_refuses_a_wrong_sample_count_and_dynamic_accepts_it": (  # noqa: E501
        "engine",
        1,
    ),
    "tests/unit/test_engine.py::test_bad_engine_inputs_are_refused_with_the_fix": ("engine", 6),
    "tests/unit/test_engine.py::test_save_interval_without_path_names_the_key": ("engine", 1),
    "tests/unit/test_hf.py::test_missing_path_names_it": ("model path", 2),
    "tests/unit/test_checkpoint.py::test_resume_with_other_modules_names_the_fix": (
        "checkpoint",
        1,
    ),
    "tests/unit/test_checkpoint.py::test_incomplete_and_damaged_checkpoints": ("checkpoint", 2),
    "tests/runtime/test_distributed.py::test_worker_exception_fails_the_driver_with_the_remote_traceback": (  # noqa: E501
        "entrypoint",
        1,
    ),
    "tests/runtime/test_distributed.py::test_unused_model_and_missing_worker_are_refused": (
        "engine",
        1,
    ),
    "tests/runtime/test_distributed.py::test_missing_entrypoint_is_a_permanent_error": (
        "entrypoint",
        1,
    ),
    "tests/runtime/test_distributed.py::test_worker_env_names_missing_variables": (
        "env contract",
        2,
    ),
}


@dataclass
class _Count:
    tried: int = 0
    refused: int = 0


_TALLY: dict[str, _Count] = defaultdict(_Count)


@dataclass
class BadInputs:
    """What one test recorded; see the module doc."""

    seen: list[tuple[str, int]] = field(default_factory=list)

    def refused(self, category: str, n: int = 1) -> None:
        """``n`` bad inputs of ``category`` were refused with a message naming the fix."""
        if category not in CATEGORIES:
            raise KeyError(f"unknown bad-input category {category!r}; add it to CATEGORIES")
        self.seen.append((category, n))


@pytest.fixture
def bad_inputs(request: pytest.FixtureRequest) -> BadInputs:
    record = BadInputs()
    request.node.stash[_KEY] = record
    return record


_KEY = pytest.StashKey[BadInputs]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[Any]:
    report = yield
    if report.when != "call":
        return report
    record = item.stash.get(_KEY, None)
    if record is not None:
        for category, n in record.seen:
            _TALLY[category].tried += n
            _TALLY[category].refused += n
        if report.failed:
            _TALLY[record.seen[-1][0] if record.seen else "unknown"].tried += 1
    counted = COUNTED.get(item.nodeid.split("[")[0])
    if counted is not None:
        category, n = counted
        _TALLY[category].tried += n
        if report.passed:
            _TALLY[category].refused += n
    return report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _TALLY:
        return
    tried = sum(c.tried for c in _TALLY.values())
    refused = sum(c.refused for c in _TALLY.values())
    write = terminalreporter.write_line
    write("")
    write(f"bad inputs: {tried} tried, {refused} refused with a message")
    for category in sorted(_TALLY, key=lambda c: -_TALLY[c].tried):
        count = _TALLY[category]
        shown = (
            f"{count.refused}" if count.refused == count.tried else f"{count.refused}/{count.tried}"
        )
        write(f"  {shown:>7}  {category:<24} {CATEGORIES.get(category, '')}")
