"""The ready-made modules' settings: typed, documented, refused naming the key, checked
before any model is built, and the README's tables are what the dataclasses say."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from rlhfjob import BaseModule, Engine, Environment
from rlhfjob.algorithms import doc
from rlhfjob.algorithms.configs import (
    GRPOTrainerConfig,
    PolicyInferenceConfig,
    PolicyTrainerConfig,
    RewardConfig,
    ValueTrainerConfig,
)
from rlhfjob.algorithms.ppo import PolicyInference
from rlhfjob.algorithms.settings import Settings, hints, type_name

REPO = Path(__file__).resolve().parents[2]
GPT = {"n_layer": 1, "n_head": 1, "n_embd": 8, "block_size": 16}
MODEL = {"task": {"num_digits": 3}, "gpt": GPT}


def test_the_readme_tables_are_what_the_dataclasses_say() -> None:
    readme = (REPO / "README.md").read_text()
    assert doc.replace_section(readme) == readme, (
        "README.md's algorithm settings drifted from rlhfjob/algorithms/configs.py: run "
        "`python -m rlhfjob.algorithms.doc --write README.md`"
    )


def test_the_generator_rewrites_a_stale_section_and_needs_its_markers(tmp_path: Path) -> None:
    stale = tmp_path / "README.md"
    stale.write_text(f"# x\n\n{doc.BEGIN}\n| `clip_eps` | float | `0.3` | old |\n{doc.END}\nend\n")
    assert doc.main(["--write", str(stale)]) == 0
    assert stale.read_text() == f"# x\n\n{doc.BEGIN}\n{doc.render()}{doc.END}\nend\n"
    assert "| `clip_eps` | float, > 0 | `0.2` |" in doc.render()
    with pytest.raises(ValueError, match="no '<!-- algorithm-settings"):
        doc.replace_section("# a README without the markers\n")


@pytest.mark.parametrize("module", doc.MODULES, ids=[m.__name__ for m in doc.MODULES])
def test_every_ready_made_module_reads_a_documented_settings_class(module: type) -> None:
    config_class = module.config_class
    assert isinstance(config_class, type) and issubclass(config_class, Settings)
    assert config_class.__dataclass_params__.frozen  # type: ignore[attr-defined]
    for field in dataclasses.fields(config_class):
        assert field.kw_only, f"{config_class.__name__}.{field.name} is not keyword-only"
        assert field.metadata.get("doc"), f"{config_class.__name__}.{field.name} has no doc"
        assert type_name(hints(config_class)[field.name])
    # The defaults themselves pass validation (given a model, which nothing defaults).
    settings = config_class.from_args("m", _model_for(config_class))
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.task = None  # type: ignore[misc]


def _model_for(cls: type[Settings]) -> dict[str, Any]:
    """The smallest valid args of ``cls``: a model where it builds one, else none."""
    return MODEL if "gpt" in hints(cls) else {}


# (settings class, args, the misspelled key's path, the suggestion)
TYPOS: list[tuple[type[Settings], dict[str, Any], str, str]] = [
    (PolicyTrainerConfig, {**MODEL, "clip_esp": 0.1}, "models.m.args.clip_esp", "clip_eps"),
    (
        PolicyInferenceConfig,
        {**MODEL, "temprature": 0.5},
        "models.m.args.temprature",
        "temperature",
    ),
    (RewardConfig, {"gama": 0.9}, "models.m.args.gama", "gamma"),
    (ValueTrainerConfig, {**MODEL, "value_clp": 0.1}, "models.m.args.value_clp", "value_clip"),
    (
        PolicyTrainerConfig,
        {**MODEL, "warmup": {"step": 3}},
        "models.m.args.warmup.step",
        "steps",
    ),
]


@pytest.mark.parametrize(("cls", "args", "path", "meant"), TYPOS, ids=[t[2] for t in TYPOS])
def test_a_misspelled_key_is_refused_with_the_known_ones_and_a_close_match(
    cls: type[Settings], args: dict[str, Any], path: str, meant: str, bad_inputs: Any
) -> None:
    with pytest.raises(ValueError) as info:
        cls.from_args("m", args)
    message = str(info.value)
    assert message.startswith(f"{path} is not a "), message
    assert f"(did you mean {meant}?)" in message, message
    assert "the known ones: " in message and meant in message.split("the known ones: ")[1]
    bad_inputs.refused("engine")


def test_the_ppo_policy_typo_of_the_issue() -> None:
    with pytest.raises(ValueError) as info:
        PolicyTrainerConfig.from_args("ppo_policy", {**MODEL, "lr": 0.002, "clip_esp": 0.1})
    known = sorted(f.name for f in dataclasses.fields(PolicyTrainerConfig))
    assert {"clip_eps", "lr", "kl_coef", "gpt", "warmup"} <= set(known)
    assert str(info.value) == (
        "models.ppo_policy.args.clip_esp is not a PolicyTrainerConfig setting (did you mean "
        f"clip_eps?); the known ones: {', '.join(known)}"
    )


# (settings class, args, what the message must say)
BAD_VALUES: list[tuple[type[Settings], dict[str, Any], str]] = [
    (PolicyTrainerConfig, {"clip_eps": -0.1}, "models.m.args.clip_eps must be > 0, got -0.1"),
    (PolicyTrainerConfig, {"clip_eps": "wide"}, "clip_eps must be of type float, got 'wide'"),
    (PolicyTrainerConfig, {"lr": 0}, "models.m.args.lr must be > 0, got 0"),
    (PolicyTrainerConfig, {"lr": True}, "models.m.args.lr must be of type float, got True"),
    (PolicyTrainerConfig, {"betas": [0.9]}, "betas must be of type [float, float], got [0.9]"),
    (PolicyTrainerConfig, {"betas": [0.9, 1.0]}, "betas must be in [0, 1), got [0.9, 1.0]"),
    (PolicyTrainerConfig, {"betas": [0.9, "x"]}, "betas[1] must be of type float, got 'x'"),
    (PolicyTrainerConfig, {"kl_estimator": "k4"}, "kl_estimator 'k4' is not one of ['k1',"),
    (PolicyTrainerConfig, {"normalize_advantages": 1}, "normalize_advantages must be of type bool"),
    (PolicyTrainerConfig, {"init_seed": 1.5}, "models.m.args.init_seed must be of type int"),
    (PolicyTrainerConfig, {"warmup": {"steps": -1}}, "models.m.args.warmup.steps must be >= 0"),
    (PolicyTrainerConfig, {"warmup": 20}, "models.m.args.warmup must be a mapping of WarmupConfig"),
    (PolicyTrainerConfig, {"gpt": {"n_layers": 2}}, "models.m.args.gpt is refused: unknown GPT"),
    (PolicyTrainerConfig, {"task": {"name": "add"}}, "models.m.args.task is refused: unknown task"),
    (PolicyTrainerConfig, {"dtype": "int8"}, "models.m.args.dtype 'int8' is not one of"),
    (ValueTrainerConfig, {"value_clip": 0}, "models.m.args.value_clip must be > 0, got 0"),
    (PolicyInferenceConfig, {"top_k": 0}, "models.m.args.top_k must be >= 1, got 0"),
    (PolicyInferenceConfig, {"temperature": None}, "temperature must be of type float, got None"),
    (
        PolicyInferenceConfig,
        {"task": None, "gpt": {**GPT, "vocab_size": 12}},
        "models.m.args.max_new_tokens must be set (>= 1) when there is no task",
    ),
    (PolicyTrainerConfig, {"task": None}, "models.m.args.gpt needs vocab_size when there is no"),
    (PolicyTrainerConfig, {"gpt": None}, "models.m.args must name a model: 'model_path'"),
    (RewardConfig, {"gamma": 1.5}, "models.m.args.gamma must be in [0, 1], got 1.5"),
    (RewardConfig, {"reward_fn": "mod.fn"}, "reward_fn 'mod.fn' is not of the form"),
]


@pytest.mark.parametrize(("cls", "change", "said"), BAD_VALUES, ids=[b[2] for b in BAD_VALUES])
def test_a_wrong_type_or_range_is_refused_naming_the_key(
    cls: type[Settings], change: dict[str, Any], said: str, bad_inputs: Any
) -> None:
    with pytest.raises(ValueError, match=re.escape(said)):
        cls.from_args("m", {**_model_for(cls), **change})
    bad_inputs.refused("engine")


def test_values_are_normalised_and_direct_construction_is_validated_too() -> None:
    # PyYAML reads 1e-3 as a string and [0.9, 0.99] as a list.
    settings = GRPOTrainerConfig.from_args("m", {**MODEL, "lr": "1e-3", "betas": [0, 0.99]})
    assert settings.lr == 0.001 and settings.betas == (0.0, 0.99)
    assert isinstance(settings.betas[0], float)
    assert (settings.kl_coef, settings.normalize_advantages) == (0.04, False)  # GRPO's defaults
    assert settings.task is not None and settings.task.num_digits == 3
    with pytest.raises(ValueError, match=re.escape("PolicyTrainerConfig.clip_eps must be > 0")):
        PolicyTrainerConfig(gpt={"vocab_size": 12}, clip_eps=0)


def test_a_settings_subclass_adds_a_key_in_one_line() -> None:
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Sampled(PolicyInferenceConfig):
        top_p: float = dataclasses.field(default=1.0, metadata={"doc": "nucleus", "check": None})

    assert Sampled.from_args("m", {**MODEL, "top_p": 0.9}).top_p == 0.9
    with pytest.raises(ValueError, match=r"top_pp is not a Sampled setting \(did you mean top_p"):
        Sampled.from_args("m", {**MODEL, "top_pp": 0.9})


def _engine(models: dict[str, Any]) -> tuple[Engine, list[str]]:
    setups: list[str] = []

    class Policy(PolicyInference):
        def setup(self) -> None:
            setups.append(self.name)
            super().setup()

    policy = Policy("policy")
    runtime = dict(num_episode=1, sample_per_episode=4, generation_batch_size=4)
    engine = Engine(
        Environment(lambda batch: policy.forward_step(batch)),
        config={"runtime": runtime, "models": models},
    )
    prompts = [{"prompt_ids": torch.tensor([1, 2, 3, 10])} for _ in range(4)]
    return engine.set_dataset(prompts), setups


def test_learn_refuses_a_typo_before_any_module_is_set_up(bad_inputs: Any) -> None:
    engine, setups = _engine({"policy": {"args": {**MODEL, "temprature": 0.5}}})
    with pytest.raises(
        ValueError, match=r"models\.policy\.args\.temprature is not a .*temperature"
    ):
        engine.learn(progress=False)
    assert setups == []
    bad_inputs.refused("engine")

    engine, setups = _engine({"policy": {"args": {**MODEL, "temperature": 0.5}}})
    assert [s["episode"] for s in engine.learn(progress=False)] == [1]
    assert setups == ["policy"]


class FreeForm(BaseModule):
    """A user's module as in ChatLearn: no settings class, any key in model_args."""

    def setup(self) -> None:
        self.seen = dict(self.model_args)

    def forward_step(self, data: dict[str, Any], iteration: int) -> dict[str, Any]:
        return {**data, "scaled": data["x"] * self.model_args["any_key_at_all"]}


def test_a_module_without_a_settings_class_keeps_the_free_dict() -> None:
    module = FreeForm("free")
    engine = Engine(
        Environment(lambda batch: module.forward_step(batch)),
        config={
            "runtime": dict(num_episode=1, sample_per_episode=2, generation_batch_size=2),
            "models": {"free": {"args": {"any_key_at_all": 2.0, "clip_esp": 0.1}}},
        },
    ).set_dataset([{"x": torch.tensor(1.0)}, {"x": torch.tensor(2.0)}])
    engine.learn(progress=False)
    assert module.seen == {"any_key_at_all": 2.0, "clip_esp": 0.1}
    assert not hasattr(module, "config")


def _load_example(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(
        f"settings_{name}", REPO / "examples" / f"{name}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("example", "manifest"),
    [
        ("ppo_sort", "ppo_sort.yaml"),
        ("grpo_sort", "grpo_sort.yaml"),
        ("ppo_sort", "k8s/ppo-sort.yaml"),
    ],
)
def test_every_example_setting_is_a_known_key(example: str, manifest: str) -> None:
    spec = yaml.safe_load((REPO / "examples" / manifest).read_text())["spec"]
    config = {"runtime": spec["runtime"], "models": spec["models"]}
    engine = _load_example(example).build_engine(config, num_prompts=4, num_eval=2)
    parsed = {m.name: m.parse_config(engine.config) for m in engine.modules}
    assert set(parsed) == set(spec["models"])
    assert all(isinstance(settings, Settings) for settings in parsed.values())
