"""A ChatLearn HEAD config given unchanged as ``config=``: HEAD's format, as its
``chatlearn/entrypoint.py`` reads it (``OmegaConf.load``, merged into the dataclasses of
``chatlearn/configs/``): ``runtime_args:`` for ``runtime:``, OmegaConf's ``${a.b.c}``
interpolation from the document root, and the FSDP/Megatron/vLLM keys of its models.
The template below is HEAD's own; keys rlhfjob has no use for are dropped
(operator/rlhfjob_operator/spec/chatlearn.py says why), a module's own settings become
its ``model_args``, a bad interpolation is refused naming the key."""

from __future__ import annotations

from typing import ClassVar

import pytest
import yaml

from rlhfjob import BaseModule, Engine, Environment, SpecError, Trainer
from rlhfjob_operator.spec import load_job_config

# alibaba/ChatLearn template/grpo_fsdp.yaml at b7af31a972eb6c420ef0b5c04ea920820d68f784,
# copied verbatim (the file ends without a newline).
GRPO_FSDP_YAML = """\
runtime_args:
  # setup config
  train_backend: fsdp
  rollout_backend: vllm
  use_partial_rollout: False
  exp_name: grpo_fsdp
  colocation: [policy,policy_trainer,ref_policy]
  # path config
  output_dir: your_output_dir
  data_path: your_data_path
  eval_data_path: your_eval_data_path
  data_checkpoint_path: ${runtime_args.output_dir}/data_checkpoint_path/
  # config for training
  num_episode: 200
  sample_per_episode: 512
  train_micro_batch_size: 8
  train_global_batch_size: 512
  num_inference_per_prompt: 32
  save_episode_interval: 200
  # config for data
  data_shuffle: True
  data_rerank: True
  max_replay_episode: 2
  # config for eval
  eval_episode_interval: 5
  enable_eval_before_training: False
  log_args_dict:
    log_dir: ${runtime_args.output_dir}
    enable_wandb: False
    wandb_project: your_wandb_project
    wandb_dir: ${runtime_args.output_dir}
    wandb_name: ${runtime_args.exp_name}
    wandb_id: ${runtime_args.exp_name}
    wandb_resume: allow

models:
  policy_trainer:
    use_expandable_segments: False
    free_gpu_memory:
      offload_weights: True
      offload_optimizer_states: True
      free_grad_buffers: True
    optimizer:
      lr: 2e-6
      clip_grad: 1
    trainable: True
    generation_batch_size: 8
    train_micro_batch_size: ${runtime_args.train_micro_batch_size}
    gpu_per_process: 1
    num_gpu: 2
    fsdp_size: ${models.policy_trainer.num_gpu}
    ulysses_sequence_parallel_size: 1
    packing: False
    meta_init: False
    groupgemm: False
    max_token_in_packing: 32768
    load: your_hf_model_path
    gradient_checkpointing: True
    pos_clip_ratio: 0.2
    neg_clip_ratio: 0.2
    entropy_coef: 0.0
    kl_coef: 0.0
    save_hf: True
  ref_policy:
    use_expandable_segments: ${models.policy_trainer.use_expandable_segments}
    free_gpu_memory:
      offload_weights: True
    generation_batch_size: 8
    gpu_per_process: 1
    num_gpu: ${models.policy_trainer.num_gpu}
    fsdp_size: ${models.policy_trainer.num_gpu}
    ulysses_sequence_parallel_size: ${models.policy_trainer.ulysses_sequence_parallel_size}
    meta_init: ${models.policy_trainer.meta_init}
    groupgemm: ${models.policy_trainer.groupgemm}
    trainable: False
    load: ${models.policy_trainer.load}
    packing: ${models.policy_trainer.packing}
    max_token_in_packing: ${models.policy_trainer.max_token_in_packing}
  policy:
    free_gpu_memory:
      offload_weights: True
    generation_batch_size: 256
    gpu_per_process: 1
    num_gpu: ${models.policy_trainer.num_gpu}
    enforce_eager: False
    tensor_model_parallel_size: 1
    trainable: False
    load: ${models.policy_trainer.load}
    num_inference_per_prompt: ${runtime_args.num_inference_per_prompt}
    max_prompt_tokens_length: 1024
    max_response_tokens_length: 2048
    temperature: 1.0
    top_p: 1.0
    eval_temperature: 0.6
    eval_top_p: 0.95
    eval_top_k: 20
    vllm_prompt_key: prompt
    vllm_input_ids_key: input_ids
    enable_thinking: False
    enable_stage_resume: False
    gpu_memory_utilization: 0.8
  reward:
    num_cpu: 2
    cpu_per_process: 1
    generation_batch_size: 256
  partial_rollout_manager:
    num_cpu: 1
    cpu_per_process: 1
    mini_response_per_prompt: 16
    max_rollout_round: 2
    rollout_ratio: [0.5, 0.5]
    load: ${models.policy_trainer.load}
  rollout_manager:
    num_cpu: 1
    cpu_per_process: 1
    generation_batch_size: ${runtime_args.sample_per_episode}"""


class Policy(BaseModule):
    """vLLM's place in HEAD's GRPO: answers each prompt (here: records what it saw)."""

    seen: ClassVar[list[int]] = []

    def forward_step(self, data, iteration):
        Policy.seen.extend(int(q) for q in data["query"])
        data["response"] = data["query"] + 1
        return data


class RefPolicy(BaseModule):
    def forward_step(self, data, iteration):
        data["ref_logprobs"] = data["response"] * 0
        return data


class Reward(BaseModule):
    def forward_step(self, data, iteration):
        data["rule_reward"] = data["response"] * 1.0
        return data


class PolicyTrainer(BaseModule):
    def train_step(self, data, iteration):
        return len(data)


def _engine(config):
    """HEAD's GRPOEngine flow (chatlearn/algorithm/grpo.py): policy, reward, ref_policy,
    trained by policy_trainer; written with rlhfjob's Custom Flow API."""
    policy, ref, reward = Policy("policy"), RefPolicy("ref_policy"), Reward("reward")
    trainer = PolicyTrainer("policy_trainer")

    def env_flow(batch):
        out = policy.forward_step(batch)
        out = ref.forward_step(out)
        return reward.forward_step(out)

    return Engine(Environment(env_flow), Trainer(lambda b: trainer.train_step(b)), config=config)


def _write(tmp_path, text):
    path = tmp_path / "grpo_fsdp.yaml"
    path.write_text(text)
    return str(path)


def test_heads_grpo_fsdp_template_reaches_the_engine(tmp_path):
    """template/grpo_fsdp.yaml, unchanged: runtime_args is the runtime, ${...} resolved
    from the document root, colocation's one list one group, HEAD's defaults where
    rlhfjob's differ; rollout_manager and partial_rollout_manager are dropped (their
    switches are off, so HEAD builds neither), which leaves the flow's four models."""
    engine = _engine(_write(tmp_path, GRPO_FSDP_YAML))
    rt = engine.config.runtime
    assert (rt.num_episode, rt.sample_per_episode, rt.num_inference_per_prompt) == (200, 512, 32)
    assert (rt.train_micro_batch_size, rt.train_global_batch_size) == (8, 512)
    assert rt.data_checkpoint_path == "your_output_dir/data_checkpoint_path/"
    assert (rt.save_episode_interval, rt.eval_episode_interval, rt.max_replay_episode) == (
        200,
        5,
        2,
    )
    assert rt.data_shuffle is True and rt.data_rerank is True
    assert rt.enable_eval_before_training is False
    assert (rt.data_path, rt.eval_data_path) == ("your_data_path", "your_eval_data_path")
    assert rt.colocation == [["policy", "policy_trainer", "ref_policy"]]
    models = engine.config.models
    assert sorted(models) == ["policy", "policy_trainer", "ref_policy", "reward"]
    trainer = models["policy_trainer"]
    assert (trainer.num_gpu, trainer.trainable, trainer.generation_batch_size) == (2, True, 8)
    assert trainer.args["optimizer"] == {"lr": 2e-6, "clip_grad": 1}  # 2e-6 a float, as OmegaConf
    assert trainer.args["train_micro_batch_size"] == 8  # ${runtime_args.train_micro_batch_size}
    assert models["ref_policy"].num_gpu == 2  # ${models.policy_trainer.num_gpu}
    assert models["ref_policy"].args["load"] == "your_hf_model_path"
    assert models["policy"].args["load"] == "your_hf_model_path"
    assert models["policy"].args["temperature"] == 1.0
    assert "num_inference_per_prompt" not in models["policy"].args  # it is the runtime's
    assert (models["reward"].num_cpu, models["reward"].generation_batch_size) == (2, 256)


def _small(data_rerank):
    """The template cut to a CPU-sized run, as a user overrides it (HEAD: ``key=value``
    after --config-file); the ${...} in it stay."""
    doc = yaml.safe_load(GRPO_FSDP_YAML)
    doc["runtime_args"].update(
        num_episode=1,
        sample_per_episode=6,
        num_inference_per_prompt=3,
        train_micro_batch_size=2,
        train_global_batch_size=6,
        save_episode_interval=None,
        eval_episode_interval=0,
        data_rerank=data_rerank,
        data_shuffle=False,
        max_replay_episode=0,
    )
    doc["models"]["policy_trainer"]["num_gpu"] = 0  # the others interpolate it
    for name in ("policy_trainer", "ref_policy", "policy", "reward"):
        doc["models"][name]["generation_batch_size"] = 6
    del doc["runtime_args"]["save_episode_interval"]
    return doc


@pytest.mark.parametrize(
    ("data_rerank", "order"),
    [(True, [0, 1, 0, 1, 0, 1]), (False, [0, 0, 0, 1, 1, 1])],
)
def test_each_prompt_is_answered_num_inference_per_prompt_times(data_rerank, order):
    """sampler.py ``MultiDatasetSampler``: an episode takes sample_per_episode //
    num_inference_per_prompt prompts and repeats them, the whole list with data_rerank
    (``data * n``), else each in place; sample_per_episode counts the copies."""
    Policy.seen = []
    engine = _engine(_small(data_rerank))
    engine.set_dataset([{"query": i} for i in range(10)])
    engine.learn(progress=False)
    assert Policy.seen == order
    assert [s["train_steps"] for s in engine.summaries] == [1]


def test_sample_per_episode_takes_whole_prompts():
    """grpo.py ``_validate_impl``: "runtime_args.sample_per_episode must be divisible by
    models.policy.num_inference_per_prompt"."""
    doc = {"runtime_args": {"sample_per_episode": 10, "num_inference_per_prompt": 4}}
    with pytest.raises(SpecError, match=r"runtime.sample_per_episode \(10\) must be a multiple "):
        load_job_config(doc)


def test_the_policys_repeat_and_the_runtimes_must_agree():
    """HEAD repeats prompts by models.policy's (base_module.py) and groups advantages by
    runtime_args' (grpo.py, AdvantageComputer): unequal, the run is wrong; refused."""
    doc = {
        "runtime_args": {"sample_per_episode": 32, "num_inference_per_prompt": 8},
        "models": {"policy": {"num_inference_per_prompt": 4}},
    }
    with pytest.raises(SpecError, match=r"models.policy.num_inference_per_prompt \(4\) and "):
        load_job_config(doc)
    doc["models"]["policy"]["num_inference_per_prompt"] = 8
    assert load_job_config(doc).runtime.num_inference_per_prompt == 8


def test_a_head_document_without_the_repeat_takes_heads_default():
    """runtime_config.py: num_inference_per_prompt defaults to 32, data_rerank to True
    (v1 and rlhfjob: 1 and False)."""
    rt = load_job_config({"runtime_args": {"sample_per_episode": 64}}).runtime
    assert (rt.num_inference_per_prompt, rt.data_rerank) == (32, True)
    assert load_job_config({"runtime": {"sample_per_episode": 64}}).runtime.data_rerank is False


# --- interpolation, as OmegaConf resolves it -------------------------------------------


def test_interpolation_is_from_the_root_relative_and_inside_strings(monkeypatch):
    """OmegaConf: ${a.b} from the root keeps the target's type; ${.x} is a sibling and
    ${..x} one container up; inside text each target is written out; \\${ is literal."""
    monkeypatch.setenv("HEAD_EPISODES", "3")
    doc = {
        "runtime_args": {
            "output_dir": "/out",
            "exp_name": "run",
            "data_checkpoint_path": "${runtime_args.output_dir}/${.exp_name}/ckpt",
            "train_micro_batch_size": 4,
            "train_global_batch_size": "${.train_micro_batch_size}",
            "sample_per_episode": "${models.policy.generation_batch_size}",
            "num_episode": "${oc.env:HEAD_EPISODES}",
            "data_path": "\\${not_a_key}",
            "num_inference_per_prompt": 1,
        },
        "models": {
            "policy": {"generation_batch_size": 8, "args": {"beside": "${..generation_batch_size}"}}
        },
    }
    config = load_job_config(doc)
    rt = config.runtime
    assert rt.data_checkpoint_path == "/out/run/ckpt"
    assert (rt.train_global_batch_size, rt.sample_per_episode, rt.num_episode) == (4, 8, 3)
    assert rt.data_path == "${not_a_key}"
    assert config.models["policy"].args["beside"] == 8


def test_an_unset_key_takes_heads_default():
    """template/grpo_megatron.yaml's policy has ``num_inference_per_prompt:
    ${runtime_args.num_inference_per_prompt}`` and its runtime_args set none: HEAD's
    merge gives RuntimeConfig's default, 32."""
    doc = {
        "runtime_args": {"sample_per_episode": 64},
        "models": {
            "policy": {"num_inference_per_prompt": "${runtime_args.num_inference_per_prompt}"}
        },
    }
    assert load_job_config(doc).runtime.num_inference_per_prompt == 32


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (
            "${models.policy_trainer.lod}",
            r"models.ref_policy.load: \$\{models.policy_trainer.lod\} names "
            r"'models.policy_trainer.lod', which this document does not set "
            r"\(models.policy_trainer has load, num_gpu\); fix the path or set the key",
        ),
        # grpo_megatron.yaml's max_token_in_packing: ${models.policy_trainer.seq_length};
        # policy_trainer has no defaults before the merge, so OmegaConf refuses it too.
        ("${models.policy_trainer.seq_length}", r"'models.policy_trainer.seq_length'"),
        ("${models.ref_policy.load}", r"interpolation loop \(models.ref_policy.load -> "),
        ("${oc.env:HEAD_UNSET_VAR}", r"variable 'HEAD_UNSET_VAR', which is not set; set it"),
        ("${oc.create:{}}", r"calls the resolver 'oc.create'"),
        ("${models.${x}}", r"nests an interpolation"),
        ("${models.policy_trainer", r"without a closing \}"),
        ("${....load}", r"past the document root"),
        ("x${models.policy_trainer}", r"puts a mapping inside a string"),
    ],
)
def test_a_bad_interpolation_names_the_key_and_the_fix(monkeypatch, value, match):
    monkeypatch.delenv("HEAD_UNSET_VAR", raising=False)
    doc = {
        "runtime_args": {"sample_per_episode": 32},
        "models": {
            "policy_trainer": {"num_gpu": 1, "load": "/m"},
            "ref_policy": {"load": value},
        },
    }
    with pytest.raises(SpecError, match=match):
        load_job_config(doc)


# --- HEAD's keys: mapped, dropped with a reason, or refused by name -------------------------


def test_runtime_args_and_runtime_are_one_section():
    with pytest.raises(SpecError, match=r"runtime_args and runtime are one section"):
        load_job_config({"runtime_args": {}, "runtime": {}})


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("use_partial_rollout", True, r"runtime.use_partial_rollout: True .*env flow decides"),
        ("task_type", "agent", r"runtime.task_type: 'agent' .*set ChatLearn's default 'chat'"),
        ("sample_per_episod", 8, r"runtime.sample_per_episod: unknown key"),
    ],
)
def test_a_head_runtime_key_rlhfjob_would_not_honour_is_refused(key, value, match):
    with pytest.raises(SpecError, match=match):
        load_job_config({"runtime_args": {key: value}})


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("packing", True, r"models.policy_trainer.packing: True .*train_micro_batch_size"),
        ("seed", 7, r"models.policy_trainer.seed: 7 .*runtime.seed"),
        ("fsdp_sise", 2, r"models.policy_trainer.fsdp_sise: unknown key"),
    ],
)
def test_a_head_model_key_rlhfjob_would_not_honour_is_refused(key, value, match):
    doc = {"runtime_args": {}, "models": {"policy_trainer": {"num_gpu": 1, key: value}}}
    with pytest.raises(SpecError, match=match):
        load_job_config(doc)


def test_a_module_setting_given_twice_is_refused():
    """``load`` is the module's model_args; given beside models.<name>.args.load too,
    one would silently win."""
    doc = {"runtime_args": {}, "models": {"policy": {"load": "/a", "args": {"load": "/b"}}}}
    with pytest.raises(SpecError, match=r"models.policy.load and models.policy.args.load"):
        load_job_config(doc)


def test_the_switched_modules_stay_when_their_switch_is_on_and_are_refused():
    """With use_rollout_manager on, HEAD builds its RolloutManager: the section is kept,
    and the switch itself is refused by name (rlhfjob's flow decides)."""
    doc = {
        "runtime_args": {"use_rollout_manager": True},
        "models": {"rollout_manager": {"num_cpu": 1}},
    }
    with pytest.raises(SpecError, match=r"runtime.use_rollout_manager: True"):
        load_job_config(doc)


def test_a_head_module_reads_its_settings_as_module_args_attributes(tmp_path):
    """HEAD's modules read ``self.module_args.load`` (chatlearn/models/*: the model's
    config dataclass); here those settings are the model's args, read the same way."""
    engine = _engine(_write(tmp_path, GRPO_FSDP_YAML))
    policy = Policy("policy")
    policy.bind(engine.config)
    assert policy.module_args.load == "your_hf_model_path"
    assert policy.module_args.temperature == 1.0
    trainer = PolicyTrainer("policy_trainer")
    trainer.bind(engine.config)
    assert trainer.module_args.optimizer.lr == 2e-6  # HEAD: module_args.optimizer.lr
    with pytest.raises(AttributeError, match="no 'lod'"):
        _ = policy.module_args.lod
