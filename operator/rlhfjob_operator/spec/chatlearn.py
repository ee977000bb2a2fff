"""A ChatLearn config document read as rlhfjob's, before validation: the one list of
ChatLearn's keys that rlhfjob spells, ignores or refuses differently.

Only a ``config=`` document (a dict, or a YAML file of ``runtime`` and ``models``) is
read this way; an RLHFJob manifest goes to the API server, whose schema knows
rlhfjob's names alone. What happens, in order:

- ``${NAME:default}`` values take the environment's ``NAME`` (else the default) and
  strings such as ``5e-6`` become numbers, as ChatLearn's YAML reader does;
- sections: ``rlhf`` (ChatLearn's old name) is ``runtime``; ``runtime_env`` (Ray's
  working directory and pip packages) is dropped, the image carries the code;
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

from rlhfjob_operator.spec.base import SpecError

__all__ = ["AT_DEFAULT", "IGNORED", "RUNTIME_RENAMES", "from_chatlearn"]

# ChatLearn v1.0.x called the replay buffer the "relay" buffer; HEAD and rlhfjob say replay.
RUNTIME_RENAMES = {
    "max_relay_episode": "max_replay_episode",
    "relay_episode_offset": "replay_episode_offset",
}
MODEL_RENAMES = {"num_device": "num_gpu"}  # deprecated in ChatLearn itself

_LOGGING = "logging and profiling: rlhfjob prints one line per episode and serves /metrics"
_RAY = "Ray's placement and collective tuning: rlhfjob places workers with Kubernetes"
_SHARDING = "rlhfjob runs each replica unsharded; num_replica gives data parallelism"

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
    ("models", "gpu_per_process"): "one process per replica, with num_gpu GPUs",
    ("models", "cpu_per_process"): "one process per replica, with num_cpu CPUs",
    ("models", "tensor_model_parallel_size"): _SHARDING,
    ("models", "pipeline_model_parallel_size"): _SHARDING,
    ("models", "expert_model_parallel_size"): _SHARDING,
    ("models", "zero_size"): _SHARDING,
    ("models", "fsdp_size"): _SHARDING,
    ("models", "sp_size"): _SHARDING,
    ("models", "model_type"): "the module's class decides what it builds",
}

# (section, key) -> (ChatLearn's default, what rlhfjob does instead). The default is
# accepted and dropped; another value is refused, as rlhfjob would not honour it.
AT_DEFAULT: dict[tuple[str, str], tuple[Any, str]] = {
    ("runtime", "data_rerank"): (False, "prompts are taken in order; no rerank"),
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
}


def from_chatlearn(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` read as rlhfjob's (the module doc says how); ``config`` itself is left
    as it was, and a section that is not a mapping is left for validation to refuse.
    Raises SpecError naming the key for one given in two spellings and for an
    AT_DEFAULT key that does not hold ChatLearn's default."""
    config = _values(config)
    config = {
        ("runtime" if k == "rlhf" and "runtime" not in config else k): v
        for k, v in config.items()
        if k != "runtime_env"
    }
    runtime = config.get("runtime")
    if isinstance(runtime, dict):
        runtime = _rename(runtime, RUNTIME_RENAMES, "runtime")
        runtime = _drop(runtime, "runtime", "runtime")
        if isinstance(runtime.get("colocation"), list):
            runtime["colocation"] = [
                [n.strip() for n in g.split(",")] if isinstance(g, str) else g
                for g in runtime["colocation"]
            ]
        ratio = runtime.get("data_ratio")
        if isinstance(ratio, str):
            runtime["data_ratio"] = [int(v) for v in ratio.split(",")]
        elif isinstance(ratio, int) and not isinstance(ratio, bool):
            runtime["data_ratio"] = [ratio]  # one entry: that many from every dataset
        config["runtime"] = runtime
    models = config.get("models")
    if isinstance(models, dict):
        config["models"] = {
            name: _drop(_rename(m, MODEL_RENAMES, f"models.{name}"), "models", f"models.{name}")
            if isinstance(m, dict)
            else m
            for name, m in models.items()
        }
    return config


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


_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _values(value: Any) -> Any:
    """ChatLearn's YAML reading of values: ``${NAME:default}`` and ``5e-6``; mappings
    recursively, lists as they are (ChatLearn's reader does not enter them either)."""
    if isinstance(value, dict):
        return {k: _values(v) for k, v in value.items()}
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("${") and text.endswith("}"):
        name, _, default = text[2:-1].partition(":")
        raw = os.environ.get(name, default if _ else None)
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
