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

Hyperparameters come from ``model_args`` (``models.<name>.args`` of the job
config) with the defaults listed on each class; models are built from it too
(see ``rlhfjob.algorithms.common``). Sampling uses torch's global RNG, which
the engine seeds and checkpoints, so a resumed run repeats an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch

from rlhfjob.algorithms.common import (
    Metrics,
    build_lm,
    build_value_model,
    import_object,
    optimizer_for,
    sequence,
    task_from_args,
)
from rlhfjob.algorithms.losses import (
    gae_advantages,
    kl_penalty,
    masked_mean,
    masked_whiten,
    ppo_policy_loss,
    value_loss,
)
from rlhfjob.models import generate_tokens, response_log_probs
from rlhfjob.module import BaseModule

__all__ = [
    "PolicyInference",
    "PolicyReference",
    "PolicyTrainer",
    "RewardFn",
    "RewardInference",
    "ValueInference",
    "ValueTrainer",
]

RewardFn = Callable[[dict[str, Any]], torch.Tensor]


class _LMModule(BaseModule):
    """A module whose model is the policy LM built from ``model_args``."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.metrics = Metrics()

    def get_and_clear_metrics(self) -> dict[str, float]:
        return self.metrics.pop()

    def arg(self, key: str, default: Any) -> Any:
        return self.model_args.get(key, default)


class PolicyInference(_LMModule):
    """Samples responses and records their log-probs under the sampling policy.

    model_args: the model keys, ``max_new_tokens`` (default: the task's
    response length; required without a task), ``temperature`` (1.0),
    ``top_k`` (None), ``eos_token_id`` (None: responses run to full length),
    ``pad_token_id`` (the task's, else 0), ``eval_temperature`` (0: greedy).

    Prompts (``set_dataset``) are dicts with ``prompt_ids`` (P,) and optionally
    ``prompt_mask`` (P,) for left padding; P must be the same within a batch.
    """

    def setup(self) -> None:
        self.model = build_lm(self.model_args)
        self.model.eval()
        task = task_from_args(self.model_args)
        self.max_new_tokens = int(self.arg("max_new_tokens", task.response_length if task else 0))
        if self.max_new_tokens < 1:
            raise ValueError(
                f"models.{self.name}.args.max_new_tokens must be set (>= 1) when there is no task"
            )
        self.pad_token_id = int(self.arg("pad_token_id", task.pad_token_id if task else 0))

    def build_dataset(self, prompts: list[Any], is_eval: bool = False) -> list[Any]:
        """Checks that every prompt is a dict holding ``prompt_ids``; ValueError names
        the first one that is not."""
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, dict) or "prompt_ids" not in prompt:
                raise ValueError(
                    f"prompt {i} is {type(prompt).__name__}; {type(self).__name__} takes dicts "
                    "with 'prompt_ids' (a 1-d LongTensor) and optionally 'prompt_mask'"
                )
        return prompts

    def _generate(self, data: dict[str, Any], temperature: float) -> dict[str, Any]:
        assert self.model is not None
        prompt = data["prompt_ids"]
        prompt_mask = data.get("prompt_mask")
        if prompt_mask is None:
            prompt_mask = torch.ones_like(prompt)
        response, response_mask = generate_tokens(
            self.model,
            prompt,
            self.max_new_tokens,
            prompt_mask=prompt_mask,
            temperature=temperature,
            top_k=self.arg("top_k", None),
            eos_token_id=self.arg("eos_token_id", None),
            pad_token_id=self.pad_token_id,
        )
        out = {
            **data,
            "prompt_mask": prompt_mask,
            "response_ids": response,
            "response_mask": response_mask,
        }
        # Recomputed in one pass, exactly as the trainer will compute them, so the
        # PPO ratio is 1 until the weights move.
        ids, mask, R = sequence(out)
        with torch.no_grad():
            out["old_logprobs"] = response_log_probs(self.model, ids, mask, R)[0]  # (B, R)
        return out

    def forward_step(self, data: dict[str, Any], iteration: int = 0) -> dict[str, Any]:
        out = self._generate(data, float(self.arg("temperature", 1.0)))
        if self.arg("eos_token_id", None) is not None:  # otherwise always max_new_tokens
            self.metrics.add("response_length", out["response_mask"].sum(1).float().mean())
        return out

    def eval_step(self, data: dict[str, Any]) -> dict[str, Any]:
        return self._generate(data, float(self.arg("eval_temperature", 0.0)))


class PolicyReference(_LMModule):
    """The frozen starting policy: ``ref_logprobs`` (B, R) of the sampled responses."""

    def setup(self) -> None:
        self.model = build_lm(self.model_args)
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

    model_args: the model keys (its backbone; the scalar head starts at 0).
    """

    def setup(self) -> None:
        self.model = build_value_model(self.model_args)
        self.model.eval()

    @torch.no_grad()
    def forward_step(self, data: dict[str, Any], iteration: int = 0) -> dict[str, Any]:
        assert self.model is not None
        return {"values": _response_values(self.model, data)}


class RewardInference(_LMModule):
    """Scores responses and turns scores into per-token rewards and advantages.

    The reward function ``fn(data) -> (B,)`` is the constructor's ``reward_fn``,
    else ``model_args.reward_fn`` ("package.module:function"), else the task's
    reward. model_args: ``kl_coef`` (0.05; the per-token penalty
    -kl_coef * KL(policy || reference) added to the rewards, skipped when the
    data has no ``ref_logprobs``), ``kl_estimator`` ("k1"), ``gamma`` (1.0),
    ``lam`` (0.95).

    With ``values`` in the data (PPO), adds ``rewards``, ``advantages`` and
    ``returns`` (GAE); without (GRPO), only ``scores``: advantages then come
    from the replay sample manager.
    """

    def __init__(self, name: str, reward_fn: RewardFn | None = None) -> None:
        super().__init__(name)
        self._reward_fn = reward_fn

    def setup(self) -> None:
        if self._reward_fn is not None:
            self.reward_fn: RewardFn = self._reward_fn
        elif "reward_fn" in self.model_args:
            self.reward_fn = import_object(self.model_args["reward_fn"])
        else:
            task = task_from_args(self.model_args)
            if task is None:
                raise ValueError(
                    f"{type(self).__name__}({self.name!r}) has no reward function: pass "
                    f"reward_fn=..., or set models.{self.name}.args.reward_fn or .task"
                )
            self.reward_fn = task.reward

    def _scores(self, data: dict[str, Any]) -> torch.Tensor:
        scores = torch.as_tensor(self.reward_fn(data), dtype=torch.float32)
        batch = data["response_ids"].shape[0]
        if scores.shape != (batch,):
            raise ValueError(
                f"the reward function returned shape {tuple(scores.shape)}; it must return "
                f"one score per sample, shape ({batch},)"
            )
        return scores

    @torch.no_grad()
    def forward_step(self, data: dict[str, Any], iteration: int = 0) -> dict[str, Any]:
        scores = self._scores(data)
        mask = data["response_mask"].float()  # (B, R)
        self.metrics.add("reward_mean", scores.mean())
        self.metrics.add("reward_min", scores.min(), reduce="min")
        self.metrics.add("reward_max", scores.max(), reduce="max")
        out = {**data, "scores": scores}
        rewards = torch.zeros_like(mask)  # (B, R)
        if "ref_logprobs" in data:
            kl = kl_penalty(
                data["old_logprobs"], data["ref_logprobs"], self.arg("kl_estimator", "k1")
            )
            self.metrics.add("kl", (kl * mask).sum(1).mean())  # per sequence
            rewards = -float(self.arg("kl_coef", 0.05)) * kl * mask
        if "values" in data:
            # The task's score arrives with the last real token of the response.
            last = (mask.sum(1).long() - 1).clamp(min=0)  # (B,)
            rewards[torch.arange(len(last)), last] += scores
            advantages, returns = gae_advantages(
                rewards,
                data["values"],
                mask,
                gamma=float(self.arg("gamma", 1.0)),
                lam=float(self.arg("lam", 0.95)),
            )
            out.update(rewards=rewards, advantages=advantages, returns=returns)
            self.metrics.add("return_mean", masked_mean(returns, mask))
        return out

    @torch.no_grad()
    def eval_step(self, data: dict[str, Any]) -> dict[str, Any]:
        """``{"reward": (B,)}``: the evaluator averages it into ``eval/reward``."""
        return {"reward": self._scores(data)}


class PolicyTrainer(_LMModule):
    """PPO's actor: the clipped surrogate, plus an optional KL term in the loss.

    One optimizer step per ``train_step`` (gradients accumulated over the
    micro-batches). model_args: the model keys (same as the policy, so its
    parameters sync by name), ``lr`` (1e-3), ``clip_eps`` (0.2),
    ``kl_coef`` (0.0: PPO puts the KL in the reward; GRPO puts it here),
    ``kl_estimator`` ("k3"), ``normalize_advantages`` (True: whitened over
    the global batch), ``max_grad_norm`` (1.0), ``weight_decay``, ``betas``.
    """

    defaults: ClassVar[dict[str, Any]] = {"lr": 1e-3, "kl_coef": 0.0, "normalize_advantages": True}

    def arg(self, key: str, default: Any = None) -> Any:
        return self.model_args.get(key, self.defaults.get(key, default))

    def setup(self) -> None:
        self.model = build_lm(self.model_args)
        self.model.train()
        self.optimizer = optimizer_for(self.model, self.model_args, default_lr=self.arg("lr"))

    def train_step(self, data: list[dict[str, Any]], iteration: int = 0) -> None:
        assert self.model is not None and self.optimizer is not None
        if not data:
            return
        self.model.train()
        advantages = [mb["advantages"].float() for mb in data]
        if self.arg("normalize_advantages"):
            flat = torch.cat([a.flatten() for a in advantages])
            flat_mask = torch.cat([mb["response_mask"].flatten() for mb in data])
            whitened = masked_whiten(flat, flat_mask)
            sizes = [a.numel() for a in advantages]
            advantages = [
                w.view_as(a) for w, a in zip(whitened.split(sizes), advantages, strict=True)
            ]
        clip_eps = float(self.arg("clip_eps", 0.2))
        kl_coef = float(self.arg("kl_coef"))
        self.optimizer.zero_grad(set_to_none=True)
        for mb, adv in zip(data, advantages, strict=True):
            ids, mask, R = sequence(mb)
            response_mask = mb["response_mask"]
            logprobs, logits = response_log_probs(self.model, ids, mask, R)  # (B, R)
            loss, clipfrac = ppo_policy_loss(
                logprobs, mb["old_logprobs"], adv, response_mask, clip_eps=clip_eps
            )
            self.metrics.add("policy_loss", loss.detach())
            self.metrics.add("clipfrac", clipfrac)
            if kl_coef > 0 and "ref_logprobs" in mb:
                kl = masked_mean(
                    kl_penalty(logprobs, mb["ref_logprobs"], self.arg("kl_estimator", "k3")),
                    response_mask,
                )
                self.metrics.add("kl_loss", kl.detach())
                loss = loss + kl_coef * kl
            (loss / len(data)).backward()
            with torch.no_grad():
                probs = torch.softmax(logits.float(), dim=-1)  # (B, R, V)
                entropy = -(probs * torch.log(probs.clamp(min=1e-12))).sum(-1)  # (B, R)
                self.metrics.add("entropy", masked_mean(entropy, response_mask))
                ratio_log = logprobs - mb["old_logprobs"]
                self.metrics.add("approx_kl", masked_mean(0.5 * ratio_log**2, response_mask))
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), float(self.arg("max_grad_norm", 1.0))
        )
        self.metrics.add("grad_norm", grad_norm)
        self.optimizer.step()


class ValueTrainer(_LMModule):
    """PPO's critic: regresses ``returns`` with the clipped value loss.

    model_args: the model keys (same as the value model), ``lr`` (1e-3),
    ``value_clip`` (0.2; null for an unclipped loss), ``max_grad_norm`` (1.0),
    ``weight_decay``, ``betas``.
    """

    def setup(self) -> None:
        self.model = build_value_model(self.model_args)
        self.model.train()
        self.optimizer = optimizer_for(self.model, self.model_args, default_lr=1e-3)

    def train_step(self, data: list[dict[str, Any]], iteration: int = 0) -> None:
        assert self.model is not None and self.optimizer is not None
        if not data:
            return
        self.model.train()
        clip = self.arg("value_clip", 0.2)
        self.optimizer.zero_grad(set_to_none=True)
        for mb in data:
            values = _response_values(self.model, mb)  # (B, R)
            loss, clipfrac = value_loss(
                values,
                mb["values"],
                mb["returns"],
                mb["response_mask"],
                clip_range=None if clip is None else float(clip),
            )
            (loss / len(data)).backward()
            self.metrics.add("value_loss", loss.detach())
            self.metrics.add("value_clipfrac", clipfrac)
        torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), float(self.arg("max_grad_norm", 1.0))
        )
        self.optimizer.step()
