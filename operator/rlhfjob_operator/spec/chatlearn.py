"""A ChatLearn config document read as rlhfjob's, before validation: the one list of
ChatLearn's keys that rlhfjob spells, ignores or refuses differently.

Only a ``config=`` document (a dict, or a YAML file of ``runtime`` and ``models``) is
read this way; an RLHFJob manifest goes to the API server, whose schema knows
rlhfjob's names alone. Both of ChatLearn's formats are read: v1.0.x's
(``chatlearn/utils/arguments.py``: ``runtime:``, ``${NAME:default}``) and HEAD's
(``template/*.yaml``, loaded by OmegaConf into ``chatlearn/configs/``' dataclasses:
``runtime_args:``, ``${runtime_args.x}``). What happens, in order:

- a whole value ``${NAME:default}`` or ``${NAME}`` (NAME no key of the document root)
  takes the environment's ``NAME`` (else the default), and strings such as ``5e-6``
  become numbers, as ChatLearn's YAML readers do;
- every other ``${...}`` is OmegaConf's interpolation, resolved relative to the
  document root (``spec.interpolation``); a path the document does not set takes
  HEAD's dataclass default (HEAD_RUNTIME_DEFAULTS, HEAD_MODEL_DEFAULTS);
- sections: ``rlhf`` (v1's old name) and ``runtime_args`` (HEAD's) are ``runtime``;
  ``runtime_env`` and ``env_args`` (Ray's working directory and pip packages) are
  dropped, the image carries the code;
- a HEAD document keeps HEAD's defaults where they differ from rlhfjob's
  (``num_inference_per_prompt: 32``, ``data_rerank: true``), and its
  ``rollout_manager`` / ``partial_rollout_manager`` sections are dropped while
  ``use_rollout_manager`` / ``use_partial_rollout`` are off, as HEAD builds neither;
- ``models.policy.num_inference_per_prompt`` (what HEAD's data loader repeats by) is
  ``runtime.num_inference_per_prompt``; the two given unequal are refused;
- each key of MODULE_ARGS (HEAD's per-module settings: ``load``, ``optimizer``,
  ``temperature``, ...) moves into ``models.<name>.args``, the module's ``model_args``;
- v1.0.x's relay spellings and ``num_device`` are renamed; ``colocation: ["a,b"]`` and
  ``data_ratio: "1,2"`` are split as ChatLearn splits them, and ``data_ratio: 2`` (that
  many from every dataset) becomes ``[2]``, which the prompt stream applies to each;
- each key of IGNORED is dropped (the table says why); each key of AT_DEFAULT is
  dropped when it holds ChatLearn's default and refused, naming key and reason, when
  not, since rlhfjob would compute something else;
- what is left is validated: a misspelled key is refused as unknown.
"""

from __future__ import annotations

import ast
import os
import re
from typing import Any

from rlhfjob_operator.spec import interpolation
from rlhfjob_operator.spec.base import SpecError

__all__ = [
    "AT_DEFAULT",
    "HEAD_MODEL_DEFAULTS",
    "HEAD_RUNTIME_DEFAULTS",
    "IGNORED",
    "MODULE_ARGS",
    "RUNTIME_RENAMES",
    "from_chatlearn",
]

# ChatLearn v1.0.x called the replay buffer the "relay" buffer; HEAD and rlhfjob say replay.
RUNTIME_RENAMES = {
    "max_relay_episode": "max_replay_episode",
    "relay_episode_offset": "replay_episode_offset",
}
MODEL_RENAMES = {"num_device": "num_gpu"}  # deprecated in ChatLearn itself

_LOGGING = "logging and profiling: rlhfjob prints one line per episode and serves /metrics"
_RAY = "Ray's placement and collective tuning: rlhfjob places workers with Kubernetes"
_SHARDING = "rlhfjob runs each replica unsharded; num_replica gives data parallelism"
_MEMORY = "memory and kernel tuning (offload, fusion, recompute): changes speed, not results"
_BACKEND = (
    "chooses among ChatLearn's built-in trainers and rollout engines; here the module's "
    "class is the implementation"
)
_PLACEMENT = "ChatLearn computes it from the parallel sizes; rlhfjob takes num_replica"

# (section, key) -> why rlhfjob has no use for it; any value is accepted and dropped.
IGNORED: dict[tuple[str, str], str] = {
    ("runtime", "log_interval"): _LOGGING,
    ("runtime", "debug"): _LOGGING,
    ("runtime", "nsys"): _LOGGING,
    ("runtime", "profiler_dir"): _LOGGING,
    ("runtime", "log_config_file"): _LOGGING,
    ("runtime", "log_args_dict"): _LOGGING,
    ("runtime", "exp_name"): _LOGGING,
    ("runtime", "output_dir"): _LOGGING,
    ("runtime", "concurrent_comm"): _RAY,
    ("runtime", "param_sync_comm_type"): _RAY,
    ("runtime", "param_sync_max_workers"): _RAY,
    ("runtime", "routed_expert_regrouping_comm_type"): _RAY,
    ("runtime", "concurrent_setup"): _RAY,
    ("runtime", "bucket_size_mb_in_memory_manager"): _RAY,
    ("runtime", "free_sync_collective_group"): _RAY,
    ("runtime", "cpu_schedule_strategy"): _RAY,
    ("runtime", "policy_to_regroup_queue"): _RAY,
    ("runtime", "validate_param_sync"): "rlhfjob's parameter sync is tested bitwise",
    ("runtime", "max_data_ckpt_nums"): "rlhfjob keeps every checkpoint",
    ("runtime", "train_backend"): _BACKEND,
    ("runtime", "rollout_backend"): _BACKEND,
    ("runtime", "model_type"): "the module's class decides what it builds",
    ("models", "gpu_per_process"): "one process per replica, with num_gpu GPUs",
    ("models", "cpu_per_process"): "one process per replica, with num_cpu CPUs",
    ("models", "tensor_model_parallel_size"): _SHARDING,
    ("models", "pipeline_model_parallel_size"): _SHARDING,
    ("models", "expert_model_parallel_size"): _SHARDING,
    ("models", "zero_size"): _SHARDING,
    ("models", "fsdp_size"): _SHARDING,
    ("models", "sp_size"): _SHARDING,
    ("models", "model_type"): "the module's class decides what it builds",
    # HEAD's FSDP, Megatron and vLLM keys (chatlearn/configs/*.py).
    ("models", "ulysses_sequence_parallel_size"): _SHARDING,
    ("models", "context_parallel_size"): _SHARDING,
    ("models", "expert_tensor_parallel_size"): _SHARDING,
    ("models", "virtual_pipeline_model_parallel_size"): _SHARDING,
    ("models", "pipeline_model_parallel_layout"): _SHARDING,
    ("models", "decoder_first_pipeline_num_layers"): _SHARDING,
    ("models", "decoder_last_pipeline_num_layers"): _SHARDING,
    ("models", "sequence_parallel"): _SHARDING,
    ("models", "use_distributed_optimizer"): _SHARDING,
    ("models", "replica_dp_size"): _PLACEMENT,
    ("models", "free_gpu_memory"): _MEMORY,
    ("models", "use_expandable_segments"): _MEMORY,
    ("models", "meta_init"): _MEMORY,
    ("models", "groupgemm"): _MEMORY,
    ("models", "gpu_memory_utilization"): _MEMORY,
    ("models", "enforce_eager"): _MEMORY,
    ("models", "max_num_batched_tokens"): _MEMORY,
    ("models", "max_seq_len_to_capture"): _MEMORY,
    ("models", "recompute_granularity"): _MEMORY,
    ("models", "recompute_method"): _MEMORY,
    ("models", "recompute_num_layers"): _MEMORY,
    ("models", "recompute_modules"): _MEMORY,
    ("models", "empty_unused_memory_level"): _MEMORY,
    ("models", "gradient_accumulation_fusion"): _MEMORY,
    ("models", "variable_seq_lengths"): _MEMORY,
    ("models", "max_token_in_packing"): "read only with packing, which rlhfjob refuses",
    ("models", "distributed_timeout_minutes"): _RAY,
    ("models", "model_provider_module"): _BACKEND,
    ("models", "vllm_prompt_key"): _BACKEND,
    ("models", "vllm_input_ids_key"): _BACKEND,
    ("models", "is_sync_mode"): _BACKEND,
}

# (section, key) -> (ChatLearn's default, what rlhfjob does instead). The default is
# accepted and dropped; another value is refused, as rlhfjob would not honour it.
AT_DEFAULT: dict[tuple[str, str], tuple[Any, str]] = {
    # HEAD's switches of its built-in GRPO's dataflow: here the entrypoint's flows decide.
    ("runtime", "use_partial_rollout"): (False, "the env flow decides how responses are made"),
    ("runtime", "use_rollout_manager"): (False, "the env flow decides how responses are made"),
    ("runtime", "task_type"): ("chat", "the env flow decides how responses are made"),
    ("runtime", "raw_chat"): (False, "build_dataset gets the prompts as read"),
    ("runtime", "consumed_samples"): (0, "resume restores the prompt position"),
    ("runtime", "load_data_checkpoint_iteration"): (
        None,
        "resume takes the latest checkpoint under data_checkpoint_path",
    ),
    ("runtime", "training_shuffle_mode"): ("batch", "data_shuffle shuffles samples"),
    ("models", "model_config_file"): ("", "put the model's settings under models.<name>.args"),
    ("models", "config_dir"): ("", "paths are the job's own"),
    ("models", "args_dict"): (None, "put the model's settings under models.<name>.args"),
    ("models", "lora"): ({"enable_lora": False}, "no LoRA"),
    ("models", "batch_generation"): ({"ranking": False}, "prompts are batched in order"),
    ("models", "packing"): (False, "micro-batches are cut by runtime.train_micro_batch_size"),
    ("models", "seed"): (1234, "a module's RNG is seeded from runtime.seed and its name"),
    ("models", "enable_stage_resume"): (False, "resume restores the whole job's state"),
    ("models", "moe_router_force_load_balancing"): (False, "experts are routed as the model says"),
}

# HEAD's per-module settings (chatlearn/configs/: the trainer's optimizer and loss, the
# rollout's sampling, the weights' path): read by the module itself, so a document's
# models.<name>.<key> becomes models.<name>.args.<key>, the module's ``model_args``.
MODULE_ARGS: frozenset[str] = frozenset(
    {
        # BaseModelConfig
        "load",
        "trust_remote_code",
        "enable_thinking",
        "max_prompt_tokens_length",
        "max_response_tokens_length",
        # PolicyTrainerConfig, FSDPPolicyTrainerConfig
        "optimizer",
        "entropy_coef",
        "kl_coef",
        "pos_clip_ratio",
        "neg_clip_ratio",
        "diff_clip_ratio",
        "final_clip_ratio",
        "use_group_sequence_policy",
        "train_micro_batch_size",
        "gradient_checkpointing",
        "save_hf",
        # RolloutConfig, PolicyConfig
        "temperature",
        "top_p",
        "top_k",
        "presence_penalty",
        "frequency_penalty",
        "repetition_penalty",
        "eval_temperature",
        "eval_top_p",
        "eval_top_k",
        "eval_presence_penalty",
        "eval_frequency_penalty",
        "eval_repetition_penalty",
        "seq_length",
        # MegatronConfig, MegatronPolicyTrainerConfig
        "tokenizer_type",
        "tokenizer_model",
        "megatron_model_cfg",
        "bf16",
        "rerun_mode",
        "calculate_per_token_loss",
        "use_checkpoint_opt_param_scheduler",
        "no_load_optim",
        "no_load_rng",
        "no_load_scheduler",
        "finetune",
        # RolloutManagerConfig, PartialRolloutManagerConfig
        "use_dynamic_load_blance",
        "max_concurrent_per_engine",
        "mini_response_per_prompt",
        "max_rollout_round",
        "rollout_ratio",
    }
)

# HEAD's RuntimeConfig defaults (chatlearn/configs/runtime_config.py; MISSING ones
# left out): what ${runtime_args.x} gives when the document does not set x.
HEAD_RUNTIME_DEFAULTS: dict[str, Any] = {
    "rollout_backend": "vllm",
    "task_type": "chat",
    "use_rollout_manager": False,
    "use_partial_rollout": False,
    "exp_name": "CHATLEARN",
    "colocation": [],
    "concurrent_setup": False,
    "debug": False,
    "nsys": False,
    "profiler_dir": None,
    "eval_data_path": None,
    "data_checkpoint_path": None,
    "num_training_epoch": 1,
    "num_inference_per_prompt": 32,
    "enable_resume_training": True,
    "raw_chat": False,
    "data_ratio": [],
    "data_shuffle": True,
    "data_rerank": True,
    "max_replay_episode": 0,
    "replay_episode_offset": 0,
    "consumed_samples": 0,
    "max_data_ckpt_nums": None,
    "load_data_checkpoint_iteration": None,
    "stream_data_loader_type": "fixed",
    "model_type": "llm",
    "eval_episode_interval": 0,
    "enable_eval_before_training": False,
    "bucket_size_mb_in_memory_manager": 1024,
    "cpu_schedule_strategy": "SPREAD",
    "policy_to_regroup_queue": "global_barrier",
}

# HEAD's BaseModelConfig defaults (chatlearn/configs/base/base_model_config.py), which
# models.policy, reward and rollout_manager have; policy_trainer and ref_policy are
# typed by train_backend only after the merge, so HEAD itself has no defaults for them.
HEAD_MODEL_DEFAULTS: dict[str, Any] = {
    "num_gpu": 0,
    "num_cpu": 0,
    "gpu_per_process": None,
    "cpu_per_process": None,
    "trainable": False,
    "packing": False,
    "max_token_in_packing": 32768,
    "generation_batch_size": 1,
    "sync_frequency": 1,
    "load": None,
    "seed": 1234,
    "replica_dp_size": None,
    "num_replica": 1,
    "trust_remote_code": True,
    "num_inference_per_prompt": 32,
    "enable_thinking": False,
    "max_prompt_tokens_length": 1024,
    "max_response_tokens_length": 2048,
}
# models.policy's PolicyConfig and RolloutConfig on top (chatlearn/configs/policy_config.py).
_HEAD_POLICY_DEFAULTS: dict[str, Any] = {
    "tensor_model_parallel_size": 1,
    "pipeline_model_parallel_size": 1,
    "expert_model_parallel_size": 1,
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": -1,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "repetition_penalty": 1.0,
    "eval_temperature": 0.6,
    "eval_top_p": 0.95,
    "eval_top_k": 20,
    "eval_presence_penalty": 0.0,
    "eval_frequency_penalty": 0.0,
    "eval_repetition_penalty": 1.0,
    "vllm_prompt_key": "prompt",
    "vllm_input_ids_key": "input_ids",
    "max_num_batched_tokens": 32768,
    "max_seq_len_to_capture": 2348,
    "gpu_memory_utilization": 0.8,
    "enforce_eager": False,
    "seq_length": 2048,
    "enable_stage_resume": False,
}
_HEAD_TYPED_MODELS = ("policy", "reward", "rollout_manager")
# HEAD builds these modules only when the runtime switch is on.
_HEAD_SWITCHED_MODELS = {
    "rollout_manager": "use_rollout_manager",
    "partial_rollout_manager": "use_partial_rollout",
}


def from_chatlearn(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` read as rlhfjob's (the module doc says how); ``config`` itself is left
    as it was, and a section that is not a mapping is left for validation to refuse.
    Raises SpecError naming the key for one given in two spellings (or two sections
    given for one), a bad interpolation, and an AT_DEFAULT key that does not hold
    ChatLearn's default."""
    config = _values(config, roots=frozenset(map(str, config)))
    config = interpolation.resolve(config, defaults=_head_default)
    head = "runtime_args" in config
    given = [k for k in ("runtime_args", "runtime", "rlhf") if k in config]
    if len(given) > 1:
        raise SpecError(
            f"{' and '.join(given)} are one section (ChatLearn HEAD's runtime_args, v1's "
            "runtime and its old name rlhf); keep one"
        )
    config = {
        ("runtime" if k in ("rlhf", "runtime_args") else k): v
        for k, v in config.items()
        if k not in ("runtime_env", "env_args")
    }
    runtime = config.get("runtime")
    models = config.get("models")
    if head:
        runtime, models = _head_defaults(
            runtime if isinstance(runtime, dict) else {},
            models if isinstance(models, dict) else {},
        )
        config["runtime"] = runtime
        if "models" in config or models:
            config["models"] = models
    if isinstance(runtime, dict) and isinstance(models, dict):
        runtime = _repeats(runtime, models)
        config["runtime"] = runtime
    if isinstance(runtime, dict):
        runtime = _rename(runtime, RUNTIME_RENAMES, "runtime")
        runtime = _drop(runtime, "runtime", "runtime")
        colocation = runtime.get("colocation")
        if head and isinstance(colocation, list) and colocation and isinstance(colocation[0], str):
            # HEAD's RuntimeConfig: a list of names is one group (v1: "a,b" strings).
            runtime["colocation"] = [colocation]
        elif isinstance(colocation, list):
            runtime["colocation"] = [
                [n.strip() for n in g.split(",")] if isinstance(g, str) else g
                for g in runtime["colocation"]
            ]
        ratio = runtime.get("data_ratio")
        if isinstance(ratio, str):
            runtime["data_ratio"] = [int(v) for v in ratio.split(",")]
        elif isinstance(ratio, int) and not isinstance(ratio, bool):
            runtime["data_ratio"] = [ratio]  # one entry: that many from every dataset
        elif head and ratio == []:
            del runtime["data_ratio"]  # HEAD's default: one from each dataset
        config["runtime"] = runtime
    if isinstance(models, dict):
        config["models"] = {
            name: _module_args(
                _drop(_rename(m, MODEL_RENAMES, f"models.{name}"), "models", f"models.{name}"),
                f"models.{name}",
            )
            if isinstance(m, dict)
            else m
            for name, m in models.items()
        }
    return config


def _head_default(path: tuple[str, ...]) -> tuple[bool, Any]:
    """HEAD's dataclass default for ``path`` (the merge gives it); (False, None) where
    HEAD has none, so that the interpolation is refused as HEAD refuses it."""
    if len(path) == 2 and path[0] == "runtime_args" and path[1] in HEAD_RUNTIME_DEFAULTS:
        return True, HEAD_RUNTIME_DEFAULTS[path[1]]
    if len(path) == 3 and path[0] == "models" and path[1] in _HEAD_TYPED_MODELS:
        if path[2] in HEAD_MODEL_DEFAULTS:
            return True, HEAD_MODEL_DEFAULTS[path[2]]
        if path[1] == "policy" and path[2] in _HEAD_POLICY_DEFAULTS:
            return True, _HEAD_POLICY_DEFAULTS[path[2]]
    return False, None


def _head_defaults(
    runtime: dict[str, Any], models: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A HEAD document's runtime and models with HEAD's defaults where rlhfjob's differ,
    and without the sections of modules HEAD would not build."""
    runtime = dict(runtime)
    policy = models.get("policy")
    if "num_inference_per_prompt" not in runtime and not (
        isinstance(policy, dict) and "num_inference_per_prompt" in policy
    ):
        runtime["num_inference_per_prompt"] = HEAD_RUNTIME_DEFAULTS["num_inference_per_prompt"]
    runtime.setdefault("data_rerank", HEAD_RUNTIME_DEFAULTS["data_rerank"])
    models = {
        name: m
        for name, m in models.items()
        if name not in _HEAD_SWITCHED_MODELS or runtime.get(_HEAD_SWITCHED_MODELS[name]) is True
    }
    return runtime, models


def _repeats(runtime: dict[str, Any], models: dict[str, Any]) -> dict[str, Any]:
    """``models.policy.num_inference_per_prompt``, which HEAD's data loader repeats each
    prompt by, as ``runtime.num_inference_per_prompt`` (HEAD's advantage uses the
    runtime's: the two must agree); removed from every model section, where rlhfjob
    has no such key (HEAD reads it from models.policy only)."""
    runtime = dict(runtime)
    for name, m in list(models.items()):
        if not isinstance(m, dict) or "num_inference_per_prompt" not in m:
            continue
        m = dict(m)
        value = m.pop("num_inference_per_prompt")
        models[name] = m
        if name != "policy":
            continue
        if "num_inference_per_prompt" in runtime and runtime["num_inference_per_prompt"] != value:
            raise SpecError(
                f"models.policy.num_inference_per_prompt ({value!r}) and "
                f"runtime.num_inference_per_prompt ({runtime['num_inference_per_prompt']!r}) "
                "differ; ChatLearn repeats prompts by the first and groups advantages by "
                "the second: set them equal"
            )
        runtime["num_inference_per_prompt"] = value
    return runtime


def _module_args(section: dict[str, Any], path: str) -> dict[str, Any]:
    """MODULE_ARGS keys of a model section moved into its ``args``."""
    moved = {k: v for k, v in section.items() if k in MODULE_ARGS}
    if not moved:
        return section
    args = section.get("args", {})
    if not isinstance(args, dict):
        return section  # validation names the bad args
    twice = sorted(set(moved) & set(args))
    if twice:
        raise SpecError(
            f"{path}.{twice[0]} and {path}.args.{twice[0]} are one setting (the module's "
            f"model_args); keep one"
        )
    out = {k: v for k, v in section.items() if k not in MODULE_ARGS}
    out["args"] = {**args, **moved}
    return out


def _rename(section: dict[str, Any], renames: dict[str, str], path: str) -> dict[str, Any]:
    out = dict(section)
    for old, new in renames.items():
        if old not in out:
            continue
        if new in out:
            raise SpecError(
                f"{path}.{old} and {path}.{new} are one setting (ChatLearn's old spelling "
                f"and today's); keep {path}.{new}"
            )
        out[new] = out.pop(old)
    return out


def _drop(section: dict[str, Any], kind: str, path: str) -> dict[str, Any]:
    out = {}
    for key, value in section.items():
        if (kind, key) in IGNORED:
            continue
        if (kind, key) in AT_DEFAULT:
            default, instead = AT_DEFAULT[(kind, key)]
            if _is_default(value, default):
                continue
            raise SpecError(
                f"{path}.{key}: {value!r} is a ChatLearn setting rlhfjob does not honour "
                f"({instead}); remove it or set ChatLearn's default {default!r}"
            )
        out[key] = value
    return out


def _is_default(value: Any, default: Any) -> bool:
    """A mapping default holds when the value's listed keys match (others are the
    sub-config's tuning, moot while it is off); None and "" match any empty value."""
    if isinstance(default, dict):
        return value is None or (
            isinstance(value, dict) and all(value.get(k, v) == v for k, v in default.items())
        )
    if default in (None, ""):
        return value in (None, "")
    if isinstance(default, str) and isinstance(value, str):
        return value.lower() == default
    return bool(value == default)


# v1's placeholder: a whole value ${NAME} or ${NAME:default}, NAME a plain name; OmegaConf
# has no undotted resolvers, so ${NAME:...} is never one of its interpolations.
_PLACEHOLDER = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)(?::([^{}]*))?\}$")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _values(value: Any, *, roots: frozenset[str]) -> Any:
    """ChatLearn's YAML reading of values: v1's ``${NAME:default}`` and ``5e-6``; mappings
    recursively, lists as they are (v1's reader does not enter them either). ``${NAME}``
    with NAME a root key is OmegaConf's, as is any other ``${...}``: left for
    ``interpolation.resolve``."""
    if isinstance(value, dict):
        return {k: _values(v, roots=roots) for k, v in value.items()}
    if not isinstance(value, str):
        return value
    text = value.strip()
    placeholder = _PLACEHOLDER.match(text)
    if placeholder and not (placeholder.group(2) is None and placeholder.group(1) in roots):
        name, default = placeholder.group(1), placeholder.group(2)
        raw = os.environ.get(name, default)
        return None if raw is None else _literal(raw)
    if _NUMBER.match(text) and not text.lstrip("+-").isdigit():
        return float(text)
    return value


def _literal(raw: str) -> Any:
    if raw == "null":
        return None
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw
