"""The settings of the ready-made PPO and GRPO modules: one class per module, one line a key.

Each module reads ``models.<name>.args`` through its class (``config_class``),
so a misspelled or out-of-range key fails the job on the driver, before any
worker starts, naming ``models.<name>.args.<key>``. A key is added with one
line (see ``rlhfjob.algorithms.settings``); the README's "Algorithm settings"
tables are generated from here (``python -m rlhfjob.algorithms.doc``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import field
from typing import Any, Literal

from rlhfjob.algorithms.losses import KLEstimator, LossAggMode
from rlhfjob.algorithms.settings import (
    AT_LEAST_1,
    NON_NEGATIVE,
    POSITIVE,
    UNIT,
    Range,
    SettingError,
    Settings,
    about,
)
from rlhfjob.algorithms.tasks import SortTask, get_task
from rlhfjob.models import GPTConfig
from rlhfjob.text.tokens import Truncation

__all__ = [
    "GRPOTrainerConfig",
    "GroupPolicyInferenceConfig",
    "ModelConfig",
    "PolicyInferenceConfig",
    "PolicyTrainerConfig",
    "RewardConfig",
    "TrainerConfig",
    "ValueTrainerConfig",
    "WarmupConfig",
]

_BETA = Range(low=0, high=1, high_open=True)
_TOP_P = Range(low=0, high=1, low_open=True)
_KL = "KL(policy, reference)"


def _task(value: Any) -> SortTask:
    if isinstance(value, SortTask):
        return value
    if not isinstance(value, Mapping):
        raise ValueError(f"a task is a mapping like {{name: sort, num_digits: 6}}, got {value!r}")
    return get_task(dict(value))


_TASK = about(
    "the task (`{name: sort, num_digits: 6, num_values: 10}`): its vocabulary, response "
    "length and reward",
    parse=_task,
    kind="mapping or null",
)


def _stop_strings(value: Any) -> tuple[str, ...]:
    strings = [value] if isinstance(value, str) else value
    if not isinstance(strings, (list, tuple)):
        raise SettingError("", f"must be a string or a list of strings, got {value!r}")
    for i, string in enumerate(strings):
        if not isinstance(string, str) or not string:
            raise SettingError(f"[{i}]", f"must be a non-empty string, got {string!r}")
    return tuple(strings)


@dataclasses.dataclass(frozen=True, kw_only=True)
class WarmupConfig(Settings):
    """A supervised warm-up on the task's right answers before RL, as RLHF starts from an
    SFT model; deterministic, and computed once per process for equal settings."""

    steps: int = field(default=0, metadata=about("optimizer steps; 0: none", check=NON_NEGATIVE))
    batch_size: int = field(default=64, metadata=about("prompts per step", check=AT_LEAST_1))
    lr: float = field(default=3e-3, metadata=about("AdamW learning rate", check=POSITIVE))
    seed: int = field(default=0, metadata=about("seed of its prompts and of its RNG"))


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig(Settings):
    """The model a module builds, from its settings alone (no object is shared between
    modules, so each may live in its own worker). One of `model_path` and `gpt` is needed."""

    model_path: str | None = field(
        default=None,
        metadata=about(
            "a local Hugging Face causal LM directory (never downloaded); wins over gpt"
        ),
    )
    dtype: Literal["float32", "bfloat16", "float16"] = field(
        default="float32",
        metadata=about(
            "dtype of the weights (the small GPT's too): `bfloat16` halves a model that only "
            "infers; trainers keep `float32` (see `mixed_precision`)"
        ),
    )
    gpt: dict[str, Any] | None = field(
        default=None,
        metadata=about(
            "the small GPT's `GPTConfig` (`n_layer`, `n_head`, `n_embd`, `block_size`, "
            "`dropout`, `bias`; `vocab_size` defaults to the task's)"
        ),
    )
    init_seed: int = field(
        default=0,
        metadata=about("seed of the small GPT's initial weights (equal seeds, equal weights)"),
    )
    weights_path: str | None = field(
        default=None, metadata=about("a `torch.save`d state dict loaded on top")
    )
    warmup: WarmupConfig | None = field(
        default=None, metadata=about("a supervised warm-up on the task (`WarmupConfig`)")
    )
    task: SortTask | None = field(default=None, metadata=_TASK)

    def validate(self) -> None:
        if self.model_path is None and self.gpt is None:
            raise SettingError(
                "",
                "must name a model: 'model_path' (a local Hugging Face model directory) or "
                "'gpt' (a GPTConfig mapping for the small GPT)",
            )
        if self.gpt is not None:
            if "vocab_size" not in self.gpt and self.task is None:
                raise SettingError("gpt", "needs vocab_size when there is no task")
            try:
                self.gpt_config()
            except ValueError as exc:
                raise SettingError("gpt", f"is refused: {exc}") from None
        if self.warmup is not None and self.warmup.steps > 0 and self.task is None:
            raise SettingError("warmup", "needs a 'task' to warm up on")

    def gpt_config(self) -> GPTConfig:
        """The small GPT's config, ``vocab_size`` from the task unless given."""
        assert self.gpt is not None
        vocab = {} if self.task is None else {"vocab_size": self.task.vocab_size}
        return GPTConfig.from_dict({**vocab, **self.gpt})


@dataclasses.dataclass(frozen=True, kw_only=True)
class PolicyInferenceConfig(ModelConfig):
    """Samples responses and records their log-probs under the sampling policy."""

    max_new_tokens: int | None = field(
        default=None,
        metadata=about(
            "tokens sampled per response (shorter ones are padded); null: the task's response "
            "length",
            check=AT_LEAST_1,
        ),
    )
    temperature: float = field(
        default=1.0,
        metadata=about("sampling temperature of rollouts; 0: greedy", check=NON_NEGATIVE),
    )
    top_k: int | None = field(
        default=None,
        metadata=about("sample among the k likeliest tokens; null: all", check=AT_LEAST_1),
    )
    top_p: float = field(
        default=1.0,
        metadata=about(
            "sample among the likeliest tokens whose probability reaches top_p (nucleus); 1: all",
            check=_TOP_P,
        ),
    )
    stop_strings: tuple[str, ...] = field(
        default=(),
        metadata=about(
            "a response also ends at the token that completes one of these in its decoded "
            "text (kept; needs `model_path`'s tokenizer)",
            parse=_stop_strings,
            kind="str or list of str",
        ),
    )
    eos_token_id: int | None = field(
        default=None,
        metadata=about(
            "ends a response (kept; later tokens are padding); null: every response runs to "
            "`max_new_tokens`",
            check=NON_NEGATIVE,
        ),
    )
    pad_token_id: int | None = field(
        default=None,
        metadata=about(
            "fills a response after its end; null: the task's, else 0", check=NON_NEGATIVE
        ),
    )
    eval_temperature: float = field(
        default=0.0, metadata=about("temperature of `eval_step`; 0: greedy", check=NON_NEGATIVE)
    )
    max_prompt_length: int | None = field(
        default=None,
        metadata=about(
            "tokens a text prompt may have (chat template applied); null: any", check=AT_LEAST_1
        ),
    )
    prompt_truncation: Truncation = field(
        default="error",
        metadata=about(
            "a longer text prompt fails the job naming its row (`error`) or keeps its last "
            "`max_prompt_length` tokens (`left`)"
        ),
    )

    def validate(self) -> None:
        super().validate()
        if self.max_new_tokens is None and self.task is None:
            raise SettingError("max_new_tokens", "must be set (>= 1) when there is no task")
        if self.stop_strings and self.model_path is None:
            raise SettingError(
                "stop_strings",
                "needs a tokenizer to read the responses with: set model_path to a saved "
                "Hugging Face model and its tokenizer, or end responses by eos_token_id",
            )

    def response_tokens(self) -> int:
        """``max_new_tokens``, else the task's response length (validate() needs one)."""
        if self.max_new_tokens is not None:
            return self.max_new_tokens
        assert self.task is not None
        return self.task.response_length

    def pad_id(self) -> int:
        """``pad_token_id``, else the task's, else 0."""
        if self.pad_token_id is not None:
            return self.pad_token_id
        return self.task.pad_token_id if self.task is not None else 0


@dataclasses.dataclass(frozen=True, kw_only=True)
class GroupPolicyInferenceConfig(PolicyInferenceConfig):
    """GRPO's policy: each training prompt answered `group_size` times."""

    group_size: int = field(
        default=8, metadata=about("responses per training prompt", check=AT_LEAST_1)
    )


def _reward_paths(value: Any) -> tuple[str, ...]:
    paths = [value] if isinstance(value, str) else value
    if not isinstance(paths, (list, tuple)) or not paths:
        raise SettingError(
            "", f"must be a 'package.module:function' or a list of them, got {value!r}"
        )
    for i, path in enumerate(paths):
        module, _, attr = path.partition(":") if isinstance(path, str) else ("", "", "")
        if not module or not attr:
            raise SettingError(
                f"[{i}]" if len(paths) > 1 else "",
                f"{path!r} is not of the form 'package.module:function'",
            )
    return tuple(paths)


def _weights(value: Any) -> tuple[float, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise SettingError("", f"must be a list of floats, got {value!r}")
    return tuple(float(_float_setting(w, f"[{i}]")) for i, w in enumerate(value))


def _float_setting(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise SettingError(key, f"must be of type float, got {value!r}")
    try:
        return float(value)
    except ValueError:
        raise SettingError(key, f"must be of type float, got {value!r}") from None


@dataclasses.dataclass(frozen=True, kw_only=True)
class RewardConfig(Settings):
    """Scores responses; with values in the data (PPO) also per-token rewards and GAE
    advantages. The rewards are the constructor's `reward_fn`, else the `reward_fn`
    functions here, then the `reward_model_path` model, weighted and summed; with
    neither, the task's reward."""

    reward_fn: tuple[str, ...] | None = field(
        default=None,
        metadata=about(
            '"package.module:function" or a list of them: TRL-style (`prompts`, `completions`, '
            "the dataset's columns in; a float or None per sample out), or `fn(data) -> (B,)`",
            parse=_reward_paths,
            kind="str, list of str, or null",
        ),
    )
    reward_weights: tuple[float, ...] | None = field(
        default=None,
        metadata=about(
            "one weight per reward: the functions, then the model; null: all 1.0",
            parse=_weights,
            kind="list of float or null",
        ),
    )
    reward_model_path: str | None = field(
        default=None,
        metadata=about(
            "a local `AutoModelForSequenceClassification` (one label) with its tokenizer, "
            "scoring prompt + completion at the last non-pad token"
        ),
    )
    tokenizer_path: str | None = field(
        default=None,
        metadata=about(
            "the policy's tokenizer (its `model_path`), which decodes responses for TRL-style "
            "functions and the reward model"
        ),
    )
    task: SortTask | None = field(default=None, metadata=_TASK)
    kl_coef: float = field(
        default=0.05,
        metadata=about(f"weight of the per-token penalty -kl_coef * {_KL}", check=NON_NEGATIVE),
    )
    kl_estimator: KLEstimator = field(
        default="k1", metadata=about("estimator of that KL (`losses.kl_penalty`)")
    )
    gamma: float = field(default=1.0, metadata=about("GAE discount", check=UNIT))
    lam: float = field(default=0.95, metadata=about("GAE lambda", check=UNIT))

    def validate(self) -> None:
        if self.reward_weights is not None:
            rewards = len(self.reward_fn or ()) + (self.reward_model_path is not None)
            if len(self.reward_weights) != rewards:
                raise SettingError(
                    "reward_weights",
                    f"has {len(self.reward_weights)} weights but reward_fn names "
                    f"{len(self.reward_fn or ())} functions and reward_model_path "
                    f"{int(self.reward_model_path is not None)} model; give one weight per "
                    "reward (the functions first, then the model)",
                )
        if self.reward_model_path is not None and self.tokenizer_path is None:
            raise SettingError(
                "tokenizer_path",
                "must be set with reward_model_path: the policy's tokenizer (its model_path) "
                "decodes the responses the reward model reads",
            )


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainerConfig(ModelConfig):
    """What every trainer shares: its model (the same keys as its inference twin, so the
    parameters sync by name) and one AdamW step per global batch."""

    lr: float = field(default=1e-3, metadata=about("AdamW learning rate", check=POSITIVE))
    weight_decay: float = field(
        default=0.0, metadata=about("AdamW weight decay", check=NON_NEGATIVE)
    )
    betas: tuple[float, float] = field(
        default=(0.9, 0.95), metadata=about("AdamW betas", check=_BETA)
    )
    max_grad_norm: float = field(
        default=1.0, metadata=about("gradients are clipped to this global norm", check=POSITIVE)
    )
    loss_agg_mode: LossAggMode = field(
        default="token-mean",
        metadata=about(
            "how per-token losses add up over the global batch (`losses.agg_loss`): "
            "`token-mean`, `seq-mean-token-mean` or `seq-mean-token-sum-norm` (Dr. GRPO)"
        ),
    )
    mixed_precision: Literal["no", "bf16"] = field(
        default="no",
        metadata=about(
            "`bf16`: forward passes under bf16 autocast while weights, gradients and AdamW "
            "state stay float32 (log-probs are taken in float32); `no`: float32 throughout"
        ),
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata=about(
            "recompute each transformer block in the backward pass instead of keeping its "
            "activations (Hugging Face models and the small GPT)"
        ),
    )
    train_max_tokens_per_micro_batch: int | None = field(
        default=None,
        metadata=about(
            "cut each global batch into micro-batches by tokens instead of "
            "`runtime.train_micro_batch_size`: samples in order, as many as fit this many real "
            "prompt + response tokens (a longer sample trains alone); null: the runtime's cut",
            check=AT_LEAST_1,
        ),
    )
    fsdp: bool = field(
        default=False,
        metadata=about(
            "shard the replicas (`num_replica` ≥ 2, under `rlhfjob run` or on a cluster) with "
            "FSDP2 (`fully_shard`, one unit per transformer block): each keeps 1/N of the "
            "weights, gradients and AdamW state; checkpoints hold them whole; with one "
            "replica, or in process, nothing to shard"
        ),
    )

    def validate(self) -> None:
        super().validate()
        if self.dtype != "float32":
            raise SettingError(
                "dtype",
                f"is {self.dtype!r}, but a trainer keeps float32 weights: AdamW steps are "
                "lost in bf16/fp16 weights; remove dtype here and set mixed_precision: bf16 "
                "for bf16 compute",
            )


@dataclasses.dataclass(frozen=True, kw_only=True)
class PolicyTrainerConfig(TrainerConfig):
    """PPO's actor: the clipped surrogate, plus an optional KL term in the loss."""

    clip_eps: float = field(
        default=0.2, metadata=about("clip range of the probability ratio", check=POSITIVE)
    )
    kl_coef: float = field(
        default=0.0,
        metadata=about(f"weight of {_KL} in the loss (PPO's is in the reward)", check=NON_NEGATIVE),
    )
    kl_estimator: KLEstimator = field(
        default="k3", metadata=about("estimator of that KL (`losses.kl_penalty`)")
    )
    normalize_advantages: bool = field(
        default=True, metadata=about("whiten the advantages over the global batch")
    )
    importance_weight_cap: float = field(
        default=2.0,
        metadata=about(
            "with runtime.max_staleness >= 1: the cap of the truncated importance weight "
            "of a stale sample's tokens (`losses.decoupled_ppo_loss`); unused at 0",
            check=AT_LEAST_1,
        ),
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class GRPOTrainerConfig(PolicyTrainerConfig):
    """GRPO's policy loss: the clipped surrogate on group advantages plus a KL term."""

    kl_coef: float = field(
        default=0.04, metadata=about(f"weight of {_KL} in the loss", check=NON_NEGATIVE)
    )
    normalize_advantages: bool = field(
        default=False,
        metadata=about("whiten the advantages again (they are already normalised per group)"),
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class ValueTrainerConfig(TrainerConfig):
    """PPO's critic: regresses the returns with the clipped value loss."""

    value_clip: float | None = field(
        default=0.2,
        metadata=about("clip range of the value change; null: an unclipped loss", check=POSITIVE),
    )
