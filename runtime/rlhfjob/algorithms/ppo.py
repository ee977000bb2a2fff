"""PPO as six ready-made modules, wired by the flows of DESIGN.md.

env flow:     PolicyInference -> PolicyReference, ValueInference -> RewardInference
trainer flow: PolicyTrainer, ValueTrainer
eval flow:    PolicyInference.eval_step -> RewardInference.eval_step

Samples are dicts of per-sample tensors (batch first): ``prompt_ids`` (B, P)
and optional ``prompt_mask``; the policy adds ``response_ids``,
``response_mask``, ``old_logprobs`` (B, R); the reference ``ref_logprobs``;
the value model ``values`` (B, R); the reward ``scores`` (B,), ``rewards``,
``advantages`` and ``returns`` (B, R). Responses always have ``max_new_tokens``
columns (padded after EOS), so samples of one episode stack.

Hyperparameters come from ``models.<name>.args`` of the job config, read
through each class's ``config_class`` (``rlhfjob.algorithms.configs``: the
keys, their types and defaults); models are built from it too (see
``rlhfjob.algorithms.common``). Sampling uses torch's global RNG, which
the engine seeds and checkpoints, so a resumed run repeats an uninterrupted one.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from typing import Any

import torch

from rlhfjob import sharding
from rlhfjob.algorithms.common import (
    Metrics,
    build_lm,
    build_value_model,
    enable_gradient_checkpointing,
    forward_precision,
    optimizer_for,
    sequence,
)
from rlhfjob.algorithms.configs import (
    ModelConfig,
    PolicyInferenceConfig,
    PolicyTrainerConfig,
    RewardConfig,
    TrainerConfig,
    ValueTrainerConfig,
)
from rlhfjob.algorithms.losses import (
    LossScale,
    agg_loss,
    decoupled_ppo_loss,
    gae_advantages,
    kl_penalty,
    masked_mean,
    masked_whiten,
    ppo_policy_loss,
    value_loss,
)
from rlhfjob.algorithms.micro_batches import token_cut
from rlhfjob.models import response_log_probs
from rlhfjob.module import BaseModule
from rlhfjob.rewards import build_scorer
from rlhfjob.rollout import GenerationSettings, engine_for
from rlhfjob.text import encode_prompts, is_text_dataset, load_tokenizer

__all__ = [
    "PolicyInference",
    "PolicyReference",
    "PolicyTrainer",
    "RewardFn",
    "RewardInference",
    "ValueInference",
    "ValueTrainer",
]

# fn(data) -> (B,) on the batch dict, or TRL-style (rlhfjob.rewards.functions).
RewardFn = Callable[..., Any]


class _LMModule(BaseModule):
    """A ready-made module: settings in ``self.config`` (parsed by ``bind`` with the
    class's ``config_class``), metrics in ``self.metrics``."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.metrics = Metrics()

    def get_and_clear_metrics(self) -> dict[str, float]:
        return self.metrics.pop()


class PolicyInference(_LMModule):
    """Samples responses and records their log-probs under the sampling policy.

    Settings: ``PolicyInferenceConfig``. Prompts (``set_dataset``) are dicts
    with ``prompt_ids`` (P,) and optionally ``prompt_mask`` (P,) for left
    padding; P must be the same within a batch. Or text prompts: dicts with a
    ``prompt`` (a string or chat messages: ``runtime.data_path``'s rows), which
    ``build_dataset`` tokenizes with the tokenizer saved beside ``model_path``
    (the fields: ``rlhfjob.text``).
    """

    config_class = PolicyInferenceConfig
    config: PolicyInferenceConfig

    tokenizer: Any = None  # loaded from model_path by the first text dataset

    def setup(self) -> None:
        self.model = build_lm(self.config)
        self.model.eval()
        self.max_new_tokens = self.config.response_tokens()
        self.pad_token_id = self.config.pad_id()
        if self.config.stop_strings and self.tokenizer is None:
            assert self.config.model_path is not None  # PolicyInferenceConfig.validate
            self.tokenizer = load_tokenizer(self.config.model_path)
        # Generation goes through this one interface (KV-cached for both model kinds),
        # so a serving engine can take its place.
        self.engine = engine_for(self.model, self.tokenizer)

    def build_dataset(self, prompts: list[Any], is_eval: bool = False) -> list[Any]:
        """Token prompts as they are; text prompts (a ``prompt``, no ``prompt_ids``)
        tokenized, chat-templated and left-padded to the longest (``encode_prompts``).

        ValueError names the first prompt that is no dict or has neither key, a dataset
        mixing the two kinds (``is_text_dataset``), and says that text needs a
        ``model_path`` (its tokenizer) when the model is the small GPT.
        """
        if not is_text_dataset(prompts, owner=type(self).__name__):
            return prompts
        if self.config.model_path is None:
            raise ValueError(
                f"models.{self.name}.args: text prompts need a tokenizer; set model_path to a "
                "saved Hugging Face model with its tokenizer"
            )
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(self.config.model_path)
        return encode_prompts(
            self.tokenizer,
            prompts,
            max_length=self.config.max_prompt_length,
            truncation=self.config.prompt_truncation,
        )

    def _settings(self, temperature: float) -> GenerationSettings:
        eos = self.config.eos_token_id
        return GenerationSettings(
            max_new_tokens=self.max_new_tokens,
            temperature=temperature,
            top_k=self.config.top_k,
            top_p=self.config.top_p,
            eos_token_ids=() if eos is None else (eos,),
            stop_strings=self.config.stop_strings,
            pad_token_id=self.pad_token_id,
        )

    def _generate(self, data: dict[str, Any], temperature: float) -> dict[str, Any]:
        assert self.model is not None
        prompt = data["prompt_ids"]
        prompt_mask = data.get("prompt_mask")
        if prompt_mask is None:
            prompt_mask = torch.ones_like(prompt)
        rollout = self.engine.generate(prompt, prompt_mask, self._settings(temperature))
        out = {
            **data,
            "prompt_mask": prompt_mask,
            "response_ids": rollout.response_ids,
            "response_mask": rollout.response_mask,
        }
        # Recomputed in one pass, exactly as the trainer will compute them, so the
        # PPO ratio is 1 until the weights move.
        ids, mask, R = sequence(out)
        with torch.no_grad():
            out["old_logprobs"] = response_log_probs(self.model, ids, mask, R)[0]  # (B, R)
        return out

    def forward_step(self, data: dict[str, Any], iteration: int = 0) -> dict[str, Any]:
        out = self._generate(data, self.config.temperature)
        ends = self.config.eos_token_id is not None or bool(self.config.stop_strings)
        if ends:  # otherwise always max_new_tokens
            lengths = out["response_mask"].sum(1).float()  # (B,)
            self.metrics.add("response_length", lengths.mean())
            self.metrics.add("response_length_max", lengths.max(), reduce="max")
            # The share that filled max_new_tokens (cut before an EOS: TRL's clipped_ratio).
            self.metrics.add("response_clip_ratio", (lengths >= self.max_new_tokens).float().mean())
        return out

    def eval_step(self, data: dict[str, Any]) -> dict[str, Any]:
        return self._generate(data, self.config.eval_temperature)


class PolicyReference(_LMModule):
    """The frozen starting policy: ``ref_logprobs`` (B, R) of the sampled responses.

    Settings: ``ModelConfig``.
    """

    config_class = ModelConfig
    config: ModelConfig

    def setup(self) -> None:
        self.model = build_lm(self.config)
        self.model.eval()
        self.model.requires_grad_(False)

    @torch.no_grad()
    def forward_step(self, data: dict[str, Any], iteration: int = 0) -> dict[str, Any]:
        assert self.model is not None
        ids, mask, R = sequence(data)
        return {"ref_logprobs": response_log_probs(self.model, ids, mask, R)[0]}


def _response_values(model: torch.nn.Module, data: dict[str, Any]) -> torch.Tensor:
    """V(s_t) for each response token t: the value at the position that predicts it."""
    ids, mask, R = sequence(data)
    return model(ids, mask)[:, -R - 1 : -1]  # (B, R)


class ValueInference(_LMModule):
    """The critic's estimates ``values`` (B, R) of the sampled responses.

    Settings: ``ModelConfig`` (its backbone; the scalar head starts at 0).
    """

    config_class = ModelConfig
    config: ModelConfig

    def setup(self) -> None:
        self.model = build_value_model(self.config)
        self.model.eval()

    @torch.no_grad()
    def forward_step(self, data: dict[str, Any], iteration: int = 0) -> dict[str, Any]:
        assert self.model is not None
        return {"values": _response_values(self.model, data)}


class RewardInference(_LMModule):
    """Scores responses and turns scores into per-token rewards and advantages.

    The rewards (``rlhfjob.rewards.build_scorer``) are the constructor's ``reward_fn``,
    else ``models.<name>.args.reward_fn`` (one "package.module:function" or a list),
    then ``reward_model_path``, weighted by ``reward_weights``; with neither, the
    task's reward. A function is TRL-style (decoded ``prompts`` and ``completions``
    and the dataset's columns as keywords) or ``fn(data) -> (B,)``
    (``rlhfjob.rewards.functions``). Settings: ``RewardConfig``; the KL penalty is
    skipped when the data has no ``ref_logprobs``.

    With ``values`` in the data (PPO), adds ``rewards``, ``advantages`` and
    ``returns`` (GAE); without (GRPO), only ``scores``: advantages then come
    from the replay sample manager.
    """

    config_class = RewardConfig
    config: RewardConfig

    def __init__(self, name: str, reward_fn: RewardFn | None = None) -> None:
        super().__init__(name)
        self._reward_fn = reward_fn

    def setup(self) -> None:
        config = self.config
        self.scorer = build_scorer(
            self.name,
            reward_fn=self._reward_fn,
            paths=config.reward_fn or (),
            weights=config.reward_weights,
            model_path=config.reward_model_path,
            tokenizer_path=config.tokenizer_path,
            task_reward=config.task.reward if config.task is not None else None,
        )

    def _scores(self, data: dict[str, Any], iteration: int = 0, *, record: bool) -> torch.Tensor:
        scores, means = self.scorer(data, step=iteration)
        for key, value in means.items() if record else ():
            self.metrics.add(key, value)  # per reward: <fn_name>_mean
        return scores

    @torch.no_grad()
    def forward_step(self, data: dict[str, Any], iteration: int = 0) -> dict[str, Any]:
        scores = self._scores(data, iteration, record=True)
        mask = data["response_mask"].float()  # (B, R)
        self.metrics.add("reward_mean", scores.mean())
        self.metrics.add("reward_min", scores.min(), reduce="min")
        self.metrics.add("reward_max", scores.max(), reduce="max")
        out = {**data, "scores": scores}
        rewards = torch.zeros_like(mask)  # (B, R)
        if "ref_logprobs" in data:
            kl = kl_penalty(data["old_logprobs"], data["ref_logprobs"], self.config.kl_estimator)
            self.metrics.add("kl", (kl * mask).sum(1).mean())  # per sequence
            rewards = -self.config.kl_coef * kl * mask
        if "values" in data:
            # The task's score arrives with the last real token of the response.
            last = (mask.sum(1).long() - 1).clamp(min=0)  # (B,)
            rewards[torch.arange(len(last)), last] += scores
            advantages, returns = gae_advantages(
                rewards,
                data["values"],
                mask,
                gamma=self.config.gamma,
                lam=self.config.lam,
            )
            out.update(rewards=rewards, advantages=advantages, returns=returns)
            self.metrics.add("return_mean", masked_mean(returns, mask))
        return out

    @torch.no_grad()
    def eval_step(self, data: dict[str, Any]) -> dict[str, Any]:
        """``{"reward": (B,)}``: the evaluator averages it into ``eval/reward``."""
        return {"reward": self._scores(data, record=False)}


class _Trainer(_LMModule):
    """What both trainers share: their memory and precision settings (``TrainerConfig``:
    ``gradient_checkpointing``, ``mixed_precision``, ``train_max_tokens_per_micro_batch``,
    ``fsdp``)."""

    config: TrainerConfig

    def _prepare(self, model: torch.nn.Module) -> None:
        """Install ``model`` in training mode, checkpointed if asked, sharded over the
        replicas if asked (and there are some), with its optimizer."""
        if self.config.gradient_checkpointing:
            enable_gradient_checkpointing(model, name=self.name)
        if self.config.fsdp and self.replica_group is not None:
            bucket = self.runtime_args.coalesced_buffer_bytes
            sharding.shard(model, self.replica_group, bucket_bytes=bucket)
            print(
                sharding.describe(model, name=self.name, group=self.replica_group), file=sys.stderr
            )
        self.model = model
        self.model.train()
        self.optimizer = optimizer_for(self.model, self.config)

    @property
    def _sharded(self) -> bool:
        return self.replica_group is not None and sharding.is_sharded(self.model)

    def _has_data(self, data: list[dict[str, Any]]) -> bool:
        """Whether this step trains; a sharded replica with no data fails every replica
        (``sharding.common_steps``) rather than leave the others waiting in a gather."""
        if self._sharded:
            sharding.common_steps(len(data), self.replica_group, name=self.name)
        return bool(data)

    def _micro_batches(self, data: list[dict[str, Any]]) -> list[tuple[dict[str, Any], bool]]:
        """The runtime's micro-batches, or with a token budget the same samples re-cut by
        it (``micro_batches.token_cut``); the losses' ``LossScale`` is taken before.

        Each comes with whether it counts: a sharded replica with fewer micro-batches
        than another repeats its last one with its loss times 0, so every replica runs
        as many forward and backward passes (FSDP gathers in each).
        """
        budget = self.config.train_max_tokens_per_micro_batch
        batches = data if budget is None else token_cut(data, budget)
        if budget is not None:
            self.metrics.add("micro_batches", len(batches))
        most = len(batches)
        if self._sharded:
            most = sharding.common_steps(len(batches), self.replica_group, name=self.name)
        return [(mb, True) for mb in batches] + [(batches[-1], False)] * (most - len(batches))

    def _clip(self) -> torch.Tensor:
        """Average the gradients over the replicas (a no-op when sharded or alone), then
        clip them to ``max_grad_norm``; returns the norm before clipping."""
        assert self.model is not None
        self.average_gradients()
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
        return sharding.full_tensors([norm])[0]

    def _forward(self) -> Any:
        assert self.model is not None
        return forward_precision(self.model, self.config)


class PolicyTrainer(_Trainer):
    """PPO's actor: the clipped surrogate, plus an optional KL term in the loss.

    One optimizer step per ``train_step`` (gradients accumulated over the
    micro-batches). Settings: ``PolicyTrainerConfig`` (the model keys the
    same as the policy's, so its parameters sync by name).
    """

    config_class = PolicyTrainerConfig
    config: PolicyTrainerConfig

    def setup(self) -> None:
        self._prepare(build_lm(self.config))
        self._shadow: torch.nn.Module | None = None  # the episode's starting policy
        self._proximal: torch.nn.Module | None = None
        if self.runtime_args.max_staleness > 0 and self._sharded:
            raise ValueError(
                f"models.{self.name}.args.fsdp with runtime.max_staleness >= 1 is not "
                "supported: the decoupled loss keeps a copy of the episode's starting policy, "
                "which is not built for sharded models; set fsdp to false or max_staleness to 0"
            )

    def before_episode(self) -> None:
        self._proximal = None  # taken again at the episode's first step

    def _proximal_model(self) -> torch.nn.Module:
        """A frozen copy of the policy as this episode's training began (one copy, kept
        and refreshed: one model's worth of memory)."""
        assert self.model is not None
        if self._proximal is None:
            if self._shadow is None:
                self._shadow = copy.deepcopy(self.model).requires_grad_(False)
            else:
                self._shadow.load_state_dict(self.model.state_dict())
            self._proximal = self._shadow
        return self._proximal

    def _policy_loss(
        self,
        logprobs: torch.Tensor,
        mb: dict[str, Any],
        scale: LossScale,
        inputs: tuple[torch.Tensor, torch.Tensor, int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The clipped surrogate against the sampling policy's ``old_logprobs``; with
        ``runtime.max_staleness`` >= 1, whose samples may come from older weights, the
        decoupled loss instead: clipped around the policy as this episode's training
        began (the proximal policy: a frozen copy, one more forward pass a micro-batch),
        corrected by the importance weight from the sampling policy to it, truncated at
        ``importance_weight_cap``, whose statistics it reports
        (``importance_weight_mean|max``, ``importance_weight_truncated``: the share of
        tokens over the cap). ``inputs``: the micro-batch's ``sequence(mb)``."""
        config, mask = self.config, mb["response_mask"]
        if self.runtime_args.max_staleness == 0:
            return ppo_policy_loss(
                logprobs,
                mb["old_logprobs"],
                mb["advantages"],
                mask,
                clip_eps=config.clip_eps,
                scale=scale,
            )
        proximal = self._proximal_model()
        with torch.no_grad(), forward_precision(proximal, config):
            proximal_logprobs = response_log_probs(proximal, *inputs)[0]
        loss, clipfrac, weights = decoupled_ppo_loss(
            logprobs,
            proximal_logprobs,
            mb["old_logprobs"],
            mb["advantages"],
            mask,
            clip_eps=config.clip_eps,
            weight_cap=config.importance_weight_cap,
            scale=scale,
        )
        real = mask.bool()
        if real.any():
            self.metrics.add("importance_weight_mean", weights[real].mean())
            self.metrics.add("importance_weight_max", weights[real].max(), reduce="max")
            over = (weights[real] > config.importance_weight_cap).float().mean()
            self.metrics.add("importance_weight_truncated", over)
        return loss, clipfrac

    def train_step(self, data: list[dict[str, Any]], iteration: int = 0) -> None:
        assert self.model is not None and self.optimizer is not None
        if not self._has_data(data):
            return
        self.model.train()
        advantages = [mb["advantages"].float() for mb in data]
        if self.config.normalize_advantages:
            flat = torch.cat([a.flatten() for a in advantages])
            flat_mask = torch.cat([mb["response_mask"].flatten() for mb in data])
            whitened = masked_whiten(flat, flat_mask)
            sizes = [a.numel() for a in advantages]
            advantages = [
                w.view_as(a) for w, a in zip(whitened.split(sizes), advantages, strict=True)
            ]
        kl_coef = self.config.kl_coef
        scale = LossScale.of(self.config.loss_agg_mode, [mb["response_mask"] for mb in data])
        batches = self._micro_batches(
            [{**mb, "advantages": adv} for mb, adv in zip(data, advantages, strict=True)]
        )
        self.optimizer.zero_grad(set_to_none=True)
        step_loss = step_kl = 0.0
        for mb, counts in batches:
            ids, mask, R = sequence(mb)
            response_mask = mb["response_mask"]
            with self._forward():  # log-probs in float32 from the logits (token_log_probs)
                logprobs, logits = response_log_probs(self.model, ids, mask, R)  # (B, R)
            loss, clipfrac = self._policy_loss(logprobs, mb, scale, (ids, mask, R))
            if not counts:  # a sharded replica's extra pass (see _micro_batches)
                (loss * 0.0).backward()
                continue
            step_loss += float(loss.detach())
            self.metrics.add("clipfrac", clipfrac)
            if kl_coef > 0 and "ref_logprobs" in mb:
                kl_tokens = kl_penalty(logprobs, mb["ref_logprobs"], self.config.kl_estimator)
                kl = agg_loss(kl_tokens, response_mask, scale)
                step_kl += float(kl.detach())
                loss = loss + kl_coef * kl
            loss.backward()  # this micro-batch's share of the global batch's loss (scale)
            with torch.no_grad():
                probs = torch.softmax(logits.float(), dim=-1)  # (B, R, V)
                entropy = -(probs * torch.log(probs.clamp(min=1e-12))).sum(-1)  # (B, R)
                self.metrics.add("entropy", masked_mean(entropy, response_mask))
                ratio_log = logprobs - mb["old_logprobs"]
                self.metrics.add("approx_kl", masked_mean(0.5 * ratio_log**2, response_mask))
        self.metrics.add("policy_loss", step_loss)
        if kl_coef > 0 and "ref_logprobs" in data[0]:
            self.metrics.add("kl_loss", step_kl)
        self.metrics.add("grad_norm", self._clip())
        self.optimizer.step()


class ValueTrainer(_Trainer):
    """PPO's critic: regresses ``returns`` with the clipped value loss.

    Settings: ``ValueTrainerConfig`` (the model keys the same as the value
    model's).
    """

    config_class = ValueTrainerConfig
    config: ValueTrainerConfig

    def setup(self) -> None:
        self._prepare(build_value_model(self.config))

    def train_step(self, data: list[dict[str, Any]], iteration: int = 0) -> None:
        assert self.model is not None and self.optimizer is not None
        if not self._has_data(data):
            return
        self.model.train()
        scale = LossScale.of(self.config.loss_agg_mode, [mb["response_mask"] for mb in data])
        self.optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        for mb, counts in self._micro_batches(data):
            with self._forward():
                values = _response_values(self.model, mb)  # (B, R), the head in float32
            loss, clipfrac = value_loss(
                values,
                mb["values"],
                mb["returns"],
                mb["response_mask"],
                clip_range=self.config.value_clip,
                scale=scale,
            )
            if not counts:  # a sharded replica's extra pass (see _micro_batches)
                (loss * 0.0).backward()
                continue
            loss.backward()  # this micro-batch's share of the global batch's loss (scale)
            step_loss += float(loss.detach())
            self.metrics.add("value_clipfrac", clipfrac)
        self.metrics.add("value_loss", step_loss)
        self._clip()
        self.optimizer.step()
