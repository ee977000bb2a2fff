"""The YAML-only text examples' settings, with no model loaded: examples/grpo_arith_engine.yaml
(run by tests/runtime/test_engine_arith.py and tests/e2e/test_arith_engine.py) and
examples/k8s/grpo-qwen.yaml (validated, not run: no Qwen weights or GSM8K here; pydantic
and the API server check its manifest in tests/unit/operator/test_job_spec.py and
tests/operator/test_pod_settings_apiserver.py).

Every module's args parse under the ready-made GRPOEngine, so a key of theirs that the
runtime does not know fails here; the engine manifest is grpo_arith.yaml's job with the
prepared paths written out (the two cannot drift); the Qwen job's reward reads GSM8K's
answers; ``--prepare-only`` without a directory says what to add.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from rlhfjob.algorithms import GRPOEngine
from rlhfjob.algorithms.settings import Settings
from rlhfjob.rewards.arith import exact_answer

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
YAML_ONLY = ["grpo_arith_engine.yaml", "k8s/grpo-qwen.yaml"]


def sections(manifest: str) -> dict[str, Any]:
    spec = yaml.safe_load((EXAMPLES / manifest).read_text())["spec"]
    assert spec["entrypoint"] == {"engine": "grpo"}
    return {"runtime": spec["runtime"], "models": spec["models"]}


def arith_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "yaml_only_grpo_arith", EXAMPLES / "grpo_arith.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("manifest", YAML_ONLY)
def test_every_setting_is_one_the_engine_knows(manifest: str) -> None:
    config = sections(manifest)
    engine = GRPOEngine(config=config)
    parsed = {m.name: m.parse_config(engine.config) for m in engine.modules}
    assert set(parsed) == set(config["models"]) == {"policy", "reference", "reward", "grpo_policy"}
    assert all(isinstance(settings, Settings) for settings in parsed.values())
    assert engine.evaluator is not None  # its eval prompts are runtime.eval_data_path's
    policy = parsed["policy"]
    assert policy.model_path and policy.eos_token_id is not None
    assert parsed["reward"].reward_fn == ("rlhfjob.rewards.arith:exact_answer",)


def test_a_misspelt_setting_of_the_qwen_job_is_refused_naming_it(bad_inputs: Any) -> None:
    config = copy.deepcopy(sections("k8s/grpo-qwen.yaml"))
    config["models"]["policy"]["args"]["max_new_token"] = 256
    with pytest.raises(ValueError, match=r"models\.policy\.args.*max_new_token"):
        GRPOEngine(config=config)
    bad_inputs.refused("config, ChatLearn rules", 1)


def test_the_engine_manifest_is_the_arith_job_with_its_paths_written_out() -> None:
    example = arith_example()
    engine = sections("grpo_arith_engine.yaml")
    assert example.missing_paths(engine) == []
    with_file = yaml.safe_load(example.CONFIG.read_text())["spec"]
    for section, model, key in example.PATH_KEYS:
        where = engine[section] if model is None else engine[section][model]["args"]
        where.pop(key)
    assert engine == {"runtime": with_file["runtime"], "models": with_file["models"]}
    assert len(example.missing_paths(engine)) == len(example.PATH_KEYS)


def test_prepare_only_without_a_workdir_says_to_name_one(
    capsys: pytest.CaptureFixture[str], bad_inputs: Any
) -> None:
    with pytest.raises(SystemExit) as info:
        arith_example().main(["--prepare-only"])
    assert info.value.code == 2
    assert "--prepare-only needs --workdir DIR" in capsys.readouterr().err
    bad_inputs.refused("config or manifest file", 1)


def test_gsm8k_answers_are_scored_by_their_final_number() -> None:
    """The Qwen job's reward on GSM8K rows: the answer column as GSM8K writes it (the worked
    solution, then ``#### 72``) against responses in the forms a chat model gives."""
    gsm8k = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n48+24 = <<48+24=72>>72\n#### 72"
    big = "She earns 1,200 + 34 = <<1200+34=1234>>1234 dollars.\n#### 1234"
    completions = [
        "In May she sold 24, so 48 + 24 = 72.\n#### 72",
        "48 + 24 = 72. The answer is 72.",
        [{"role": "assistant", "content": "Total: $1,234."}],  # chat form, thousands comma
        "48 + 24 = 72, so #### 70",  # the final number counts, not the first right one
        "I cannot tell.",
    ]
    answers = [gsm8k, gsm8k, big, gsm8k, gsm8k]
    assert exact_answer(completions=completions, answer=answers) == [1.0, 1.0, 1.0, 0.0, 0.0]
