"""ChatLearn's config rules: each bad config is refused with a message naming the key."""

from __future__ import annotations

import pytest

from rlhfjob_operator.spec import JobConfig, SpecError, load_job_config

BAD = [
    (
        {"runtime": {"train_micro_batch_size": 4, "train_global_batch_size": 6}},
        "train_global_batch_size (6) must be a multiple of runtime.train_micro_batch_size (4)",
    ),
    (
        {
            "runtime": {
                "sample_per_episode": 8,
                "train_micro_batch_size": 4,
                "train_global_batch_size": 16,
            }
        },
        "train_global_batch_size (16) is larger than runtime.sample_per_episode (8)",
    ),
    (
        {
            "runtime": {"sample_per_episode": 8, "generation_batch_size": 4},
            "models": {"policy": {"num_replica": 3}},
        },
        "models.policy: num_replica (3) x generation_batch_size (4) = 12 exceeds",
    ),
    (
        {
            "runtime": {"sample_per_episode": 8},
            "models": {"p": {"num_replica": 2, "generation_batch_size": 5}},
        },
        "models.p: num_replica (2) x generation_batch_size (5)",
    ),
    (
        {
            "runtime": {"colocation": [["a", "b"], ["b", "c"]]},
            "models": {"a": {}, "b": {}, "c": {}},
        },
        "model 'b' is in two colocation groups",
    ),
    (
        {"runtime": {"colocation": [["a", "x"]]}, "models": {"a": {}}},
        "runtime.colocation names model 'x'",
    ),
    ({"runtime": {"colocation": [["a"]]}, "models": {"a": {}}}, "names at least two models"),
    ({"runtime": {"sample_per_eposide": 8}}, "runtime.sample_per_eposide: unknown key"),
    ({"runtime": {}, "modles": {}}, "modles: unknown key"),
    ({"models": {"policy": {"num_gpus": 1}}}, "models.policy.num_gpus: unknown key"),
    ({"runtime": {"num_episode": 0}}, "runtime.num_episode: Input should be greater than"),
    ({"runtime": {"stream_data_loader_type": "lazy"}}, "runtime.stream_data_loader_type"),
    ({"runtime": {"save_episode_interval": 2}}, "runtime.data_checkpoint_path is not"),
    (
        {"runtime": {"generation_batch_size": 64, "sample_per_episode": 8}},
        "generation_batch_size (64) is larger than runtime.sample_per_episode (8)",
    ),
    ({"models": {"policy": {"sync_frequency": 0}}}, "models.policy.sync_frequency"),
    ({"runtime": {"seed": "abc"}}, "runtime.seed"),
    # Exact types, as the API server's schema: no coercion of strings.
    ({"runtime": {"num_episode": "3"}}, "runtime.num_episode: Input should be a valid integer"),
    ({"runtime": {"data_shuffle": "yes"}}, "runtime.data_shuffle: Input should be a valid boolean"),
    ({"models": {"policy": {"num_replica": "2"}}}, "models.policy.num_replica: Input should be"),
    ({"models": {"policy": {"trainable": 1}}}, "models.policy.trainable: Input should be"),
]


@pytest.mark.parametrize(("config", "message"), BAD)
def test_bad_config_is_refused_naming_the_key(config, message):
    with pytest.raises(SpecError) as err:
        load_job_config(config)
    assert message in str(err.value)


def test_a_dynamic_loaders_global_batch_is_sized_in_what_the_flow_yields():
    """GRPO's episode is sample_per_episode prompts x group_size responses, so one
    optimizer step an episode (as TRL's GRPOTrainer takes) needs a global batch larger
    than sample_per_episode: the dynamic loader allows it, the fixed one does not."""
    runtime = {"sample_per_episode": 4, "train_micro_batch_size": 32, "train_global_batch_size": 32}
    config = JobConfig.model_validate(
        {"runtime": {**runtime, "stream_data_loader_type": "dynamic"}}
    )
    assert config.runtime.global_batch_size == 32
    with pytest.raises(SpecError, match=r"with stream_data_loader_type 'fixed'"):
        load_job_config({"runtime": runtime})


def test_defaults_follow_chatlearn():
    config = load_job_config({})
    rt = config.runtime
    assert (rt.num_training_epoch, rt.coalesced_buffer_mb, rt.stream_data_loader_type) == (
        1,
        100,
        "fixed",
    )
    assert rt.global_batch_size == rt.train_micro_batch_size, "global defaults to micro"
    assert rt.enable_resume_training is True
    assert config.model("anything").num_replica == 1


def test_yaml_path_and_manifest(tmp_path):
    bare = tmp_path / "job.yaml"
    bare.write_text("runtime:\n  num_episode: 3\nmodels:\n  policy:\n    num_replica: 1\n")
    assert load_job_config(bare).runtime.num_episode == 3
    assert load_job_config(str(bare)).models["policy"].num_replica == 1
    assert isinstance(load_job_config(load_job_config(bare)), JobConfig)
    with pytest.raises(SpecError, match="does not exist"):
        load_job_config(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("runtime: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_job_config(broken)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("3\n")
    with pytest.raises(SpecError, match="must hold a mapping"):
        load_job_config(scalar)
    with pytest.raises(SpecError, match="must be a dict"):
        load_job_config(3)  # type: ignore[arg-type]


def test_cli_validate(tmp_path, capsys):
    from rlhfjob_operator.cli import main

    good = tmp_path / "good.yaml"
    good.write_text("runtime:\n  num_episode: 3\n")
    assert main(["validate", str(good)]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("runtime:\n  num_epsiode: 3\n")
    assert main(["validate", str(bad)]) == 2
    assert "runtime.num_epsiode: unknown key" in capsys.readouterr().err
