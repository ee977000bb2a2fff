"""Pure loss and advantage functions of PPO and GRPO: tensors in, tensors out.

Conventions: per-token tensors are (B, T) with a 0/1 ``mask`` (B, T) marking
real response tokens; padding never contributes to a mean. Nothing here holds
state or touches an RNG, so each function is tested against hand-computed
values (tests/unit/test_losses.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal

import torch

__all__ = [
    "LossAggMode",
    "LossScale",
    "agg_loss",
    "decoupled_ppo_loss",
    "gae_advantages",
    "group_normalized_advantages",
    "kl_penalty",
    "masked_mean",
    "masked_whiten",
    "ppo_policy_loss",
    "value_loss",
]


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` where ``mask`` is 1; an all-zero mask gives 0, not NaN."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked entries (population std); padding becomes 0.

    A constant ``x`` (std 0) gives all zeros rather than a division by zero.
    """
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + eps) * mask.to(x.dtype)


def gae_advantages(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    *,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over a response: returns (advantages, returns).

    rewards, values, mask: (B, T). The episode ends after the last masked-in
    token, so the value after it is 0 (no bootstrap); padding positions get
    advantage 0 and return 0. ``returns = advantages + values`` are the value
    model's targets.
    """
    m = mask.to(values.dtype)
    rewards, values = rewards * m, values * m
    T = rewards.shape[1]
    last = torch.zeros_like(rewards[:, 0])  # (B,)
    advantages = torch.zeros_like(rewards)  # (B, T)
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = (delta + gamma * lam * last) * m[:, t]
        advantages[:, t] = last
    return advantages, (advantages + values) * m


KLEstimator = Literal["k1", "k2", "k3"]


def kl_penalty(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: KLEstimator = "k1"
) -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from sampled tokens' log-probs.

    k1 = log p - log q (unbiased, can be negative); k2 = (log p - log q)^2 / 2;
    k3 = q/p - 1 - log(q/p) (unbiased, always >= 0; Schulman's estimator, as
    used by GRPO). An unknown estimator is a ValueError.
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "k3":
        # Clamp before exp: a token the reference finds far likelier would overflow.
        neg = (-log_ratio).clamp(max=20.0)
        return torch.exp(neg) - 1.0 - neg
    raise ValueError(f"unknown KL estimator {estimator!r}; use 'k1', 'k2' or 'k3'")


LossAggMode = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]


@dataclasses.dataclass(frozen=True)
class LossScale:
    """How per-token losses add up to one global batch's loss, split in micro-batches.

    ``tokens``, ``sequences`` and ``horizon`` describe the whole global batch (every
    micro-batch's mask), so the micro-batches' :func:`agg_loss` values sum to the loss
    of the global batch taken at once, however it is split, and whether or not a
    micro-batch is trimmed of its padding columns.
    """

    mode: LossAggMode
    tokens: float  # real response tokens in the global batch
    sequences: int  # responses in the global batch
    horizon: int | None = None  # response columns of the global batch; None: each loss's own

    @classmethod
    def of(cls, mode: LossAggMode, masks: Sequence[torch.Tensor]) -> LossScale:
        """The scale of a global batch whose micro-batches have these (B, R) masks."""
        tokens = float(sum(float(m.sum()) for m in masks))
        horizon = max((int(m.shape[-1]) for m in masks), default=None)
        return cls(
            mode, tokens=tokens, sequences=sum(int(m.shape[0]) for m in masks), horizon=horizon
        )


def agg_loss(loss: torch.Tensor, mask: torch.Tensor, scale: LossScale) -> torch.Tensor:
    """One micro-batch's share of its global batch's loss, from per-token ``loss`` (B, R):

    - ``token-mean``: every real token of the global batch weighs the same,
      sum(loss * mask) / tokens (DAPO's; long responses weigh more);
    - ``seq-mean-token-mean``: each response's token mean, averaged over the global
      batch's responses (GRPO's original; each response weighs the same);
    - ``seq-mean-token-sum-norm``: each response's token sum over the response
      horizon R (a constant: responses are padded to ``max_new_tokens``; the scale's
      ``horizon`` when set, so a micro-batch trimmed to its longest response still
      divides by the global batch's R), averaged over the responses (Dr. GRPO's: no
      length bias either way).

    An all-padding response adds 0; a global batch with no real token gives 0.
    """
    mask = mask.to(loss.dtype)
    per_token = loss * mask
    if scale.mode == "token-mean":
        return per_token.sum() / max(scale.tokens, 1.0)
    if scale.mode == "seq-mean-token-mean":
        per_seq = per_token.sum(-1) / mask.sum(-1).clamp(min=1.0)
    elif scale.mode == "seq-mean-token-sum-norm":
        per_seq = per_token.sum(-1) / (scale.horizon or loss.shape[-1])
    else:
        raise ValueError(
            f"unknown loss_agg_mode {scale.mode!r}; use 'token-mean', 'seq-mean-token-mean' "
            "or 'seq-mean-token-sum-norm'"
        )
    return per_seq.sum() / max(scale.sequences, 1)


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_eps: float = 0.2,
    scale: LossScale | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate, to minimise: returns (loss, clip fraction).

    Per token -min(r * A, clip(r, 1-eps, 1+eps) * A) with r = exp(logprobs -
    old_logprobs), aggregated by ``scale`` (:func:`agg_loss`), or the mean over
    masked tokens when None. The clip fraction is the share of tokens where the
    clipped term was the one taken (their gradient is 0).
    """
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * advantages
    surrogate = -torch.min(unclipped, clipped)
    loss = masked_mean(surrogate, mask) if scale is None else agg_loss(surrogate, mask, scale)
    clipfrac = masked_mean((clipped < unclipped).to(logprobs.dtype), mask)
    return loss, clipfrac.detach()


def decoupled_ppo_loss(
    logprobs: torch.Tensor,
    proximal_logprobs: torch.Tensor,
    behaviour_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_eps: float = 0.2,
    weight_cap: float = 2.0,
    scale: LossScale | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decoupled PPO (Hilton et al. 2022, as AReaL's asynchronous PPO), to minimise, for
    samples drawn by an older (behaviour) policy: returns (loss, clip fraction, weights).

    Per token -w * min(r * A, clip(r, 1-eps, 1+eps) * A), where r = exp(logprobs -
    proximal_logprobs) is clipped around the proximal policy (the trainer's as this
    episode's training began) instead of the behaviour policy, and w = min(exp(proximal_logprobs -
    behaviour_logprobs), weight_cap) is the truncated importance weight (no gradient)
    that corrects for the behaviour policy being older. Aggregated by ``scale`` as
    :func:`ppo_policy_loss`. With proximal = behaviour it is ``ppo_policy_loss``.
    ``weights`` are the untruncated importance weights (B, R), for statistics.
    """
    weights = torch.exp((proximal_logprobs - behaviour_logprobs).detach())
    truncated = weights.clamp(max=weight_cap)
    ratio = torch.exp(logprobs - proximal_logprobs)
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * advantages
    surrogate = -truncated * torch.min(unclipped, clipped)
    loss = masked_mean(surrogate, mask) if scale is None else agg_loss(surrogate, mask, scale)
    clipfrac = masked_mean((clipped < unclipped).to(logprobs.dtype), mask)
    return loss, clipfrac.detach(), weights


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_range: float | None = 0.2,
    scale: LossScale | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss, to minimise: returns (loss, clip fraction).

    Per token 0.5 * max((v - R)^2, (v_clip - R)^2) with v_clip = old_v +
    clip(v - old_v, -c, c), as in PPO2/OpenRLHF, aggregated by ``scale``
    (:func:`agg_loss`), or the mean over masked tokens when None. With
    ``clip_range`` None it is the plain 0.5 * squared error and the clip
    fraction is 0.
    """

    def agg(per_token: torch.Tensor) -> torch.Tensor:
        return masked_mean(per_token, mask) if scale is None else agg_loss(per_token, mask, scale)

    error = (values - returns) ** 2
    if clip_range is None:
        return agg(0.5 * error), torch.zeros(())
    clipped_values = old_values + (values - old_values).clamp(-clip_range, clip_range)
    clipped_error = (clipped_values - returns) ** 2
    loss = agg(0.5 * torch.max(error, clipped_error))
    clipfrac = masked_mean((clipped_error > error).to(values.dtype), mask)
    return loss, clipfrac.detach()


def group_normalized_advantages(
    scores: torch.Tensor, group_ids: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """GRPO's advantage: each score minus its group's mean, over the group's std.

    scores, group_ids: (N,). The std is the population std, so a group of one
    sample, or one whose samples all scored the same, gets advantage 0 (there
    is nothing to prefer) instead of NaN.
    """
    if scores.shape != group_ids.shape or scores.dim() != 1:
        raise ValueError(
            f"scores {tuple(scores.shape)} and group_ids {tuple(group_ids.shape)} "
            "must be the same 1-d shape"
        )
    scores = scores.float()
    _, inverse = torch.unique(group_ids, return_inverse=True)
    n_groups = int(inverse.max()) + 1 if inverse.numel() else 0
    count = torch.zeros(n_groups).index_add_(0, inverse, torch.ones_like(scores))
    mean = torch.zeros(n_groups).index_add_(0, inverse, scores) / count
    centred = scores - mean[inverse]
    var = torch.zeros(n_groups).index_add_(0, inverse, centred**2) / count
    return centred / (var[inverse].sqrt() + eps)
