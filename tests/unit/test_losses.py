"""The pure losses of PPO and GRPO against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from rlhfjob.algorithms.losses import (
    LossScale,
    agg_loss,
    decoupled_ppo_loss,
    gae_advantages,
    group_normalized_advantages,
    kl_penalty,
    masked_mean,
    masked_whiten,
    ppo_policy_loss,
    value_loss,
)


def t(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_masked_mean_ignores_padding_and_is_zero_when_empty() -> None:
    x = t([1.0, 2.0, 100.0], [3.0, 100.0, 100.0])
    mask = t([1, 1, 0], [1, 0, 0])
    assert masked_mean(x, mask).item() == pytest.approx(2.0)  # (1 + 2 + 3) / 3
    assert masked_mean(x, mask, dim=1).tolist() == pytest.approx([1.5, 3.0])
    assert masked_mean(x, torch.zeros_like(mask)).item() == 0.0


def test_masked_whiten_uses_population_std_and_zeroes_padding() -> None:
    x = t([1.0, 3.0, 50.0])
    mask = t([1, 1, 0])
    # mean 2, population std 1 -> (-1, 1); padding -> 0
    assert masked_whiten(x, mask).tolist()[0] == pytest.approx([-1.0, 1.0, 0.0], abs=1e-6)
    assert masked_whiten(t([5.0, 5.0]), t([1, 1])).tolist() == [[0.0, 0.0]]


def test_gae_by_hand() -> None:
    # gamma 0.9, lam 0.5, one sequence of 3 tokens; no bootstrap after the last.
    rewards, values, mask = t([0.0, 0.0, 1.0]), t([0.5, 0.6, 0.7]), t([1, 1, 1])
    adv, ret = gae_advantages(rewards, values, mask, gamma=0.9, lam=0.5)
    d2 = 1.0 - 0.7  # 0.3
    d1 = 0.0 + 0.9 * 0.7 - 0.6  # 0.03
    d0 = 0.0 + 0.9 * 0.6 - 0.5  # 0.04
    a2 = d2
    a1 = d1 + 0.45 * a2  # 0.165
    a0 = d0 + 0.45 * a1  # 0.11425
    assert adv.tolist()[0] == pytest.approx([a0, a1, a2])
    assert ret.tolist()[0] == pytest.approx([a0 + 0.5, a1 + 0.6, a2 + 0.7])


def test_gae_stops_at_the_mask() -> None:
    # The padded third token must neither bootstrap the second nor get an advantage.
    rewards, values, mask = t([0.0, 1.0, 9.0]), t([0.2, 0.4, 5.0]), t([1, 1, 0])
    adv, ret = gae_advantages(rewards, values, mask, gamma=1.0, lam=1.0)
    # a1 = 1 - 0.4 = 0.6; a0 = (0 + 0.4 - 0.2) + 0.6 = 0.8
    assert adv.tolist()[0] == pytest.approx([0.8, 0.6, 0.0])
    assert ret.tolist()[0] == pytest.approx([1.0, 1.0, 0.0])


def test_kl_estimators_by_hand() -> None:
    logp, ref = t([math.log(0.5)]), t([math.log(0.25)])
    # log p/q = log 2
    assert kl_penalty(logp, ref, "k1").item() == pytest.approx(math.log(2))
    assert kl_penalty(logp, ref, "k2").item() == pytest.approx(0.5 * math.log(2) ** 2)
    # k3 = q/p - 1 - log(q/p) = 0.5 - 1 + log 2
    assert kl_penalty(logp, ref, "k3").item() == pytest.approx(0.5 - 1 + math.log(2))
    assert kl_penalty(logp, logp, "k3").item() == 0.0
    with pytest.raises(ValueError, match="k4"):
        kl_penalty(logp, ref, "k4")  # type: ignore[arg-type]


def test_ppo_policy_loss_clips_by_hand() -> None:
    # Token 1: ratio 2 with A = +1 -> clipped at 1.2 (clipped term taken).
    # Token 2: ratio 0.5 with A = +1 -> unclipped 0.5 (min picks it, not clipped).
    # Token 3: ratio 2 with A = -1 -> min(-2, -1.2) = -2 (unclipped, pessimistic).
    # Token 4: padding, must not count.
    old = t([0.0, 0.0, 0.0, 0.0])
    new = t([math.log(2.0), math.log(0.5), math.log(2.0), 5.0])
    adv = t([1.0, 1.0, -1.0, 100.0])
    mask = t([1, 1, 1, 0])
    loss, clipfrac = ppo_policy_loss(new, old, adv, mask, clip_eps=0.2)
    assert loss.item() == pytest.approx(-(1.2 + 0.5 - 2.0) / 3)
    assert clipfrac.item() == pytest.approx(1 / 3)


def test_ppo_policy_loss_gradient_is_zero_where_clipped() -> None:
    new = torch.tensor([[math.log(2.0)]], requires_grad=True)
    loss, _ = ppo_policy_loss(new, t([0.0]), t([1.0]), t([1]), clip_eps=0.2)
    loss.backward()
    assert new.grad is not None and new.grad.item() == 0.0


def test_decoupled_ppo_loss_is_ppo_on_fresh_samples() -> None:
    new, old = t([math.log(2.0), math.log(0.5), 0.3]), t([0.0, 0.0, 0.1])
    adv, mask = t([1.0, 1.0, -1.0]), t([1, 1, 1])
    expected, clipfrac = ppo_policy_loss(new, old, adv, mask, clip_eps=0.2)
    loss, frac, weights = decoupled_ppo_loss(new, old, old, adv, mask, clip_eps=0.2)
    assert torch.equal(loss, expected) and torch.equal(frac, clipfrac)
    assert torch.equal(weights, torch.ones(1, 3))


def test_decoupled_ppo_loss_weights_stale_tokens_truncated_by_hand() -> None:
    # The trainer's (proximal) log-probs are the current ones: ratio 1, no clip. The
    # behaviour policy gave token 1 a quarter of the proximal probability (weight 4,
    # truncated to the cap 2), token 2 twice it (weight 0.5); token 3 is padding.
    new = torch.tensor([[0.0, 0.0, 9.0]], requires_grad=True)
    behaviour = t([-math.log(4.0), math.log(2.0), 0.0])
    adv, mask = t([1.0, -1.0, 50.0]), t([1, 1, 0])
    loss, frac, weights = decoupled_ppo_loss(
        new, new.detach(), behaviour, adv, mask, clip_eps=0.2, weight_cap=2.0
    )
    assert loss.item() == pytest.approx(-(2.0 * 1.0 + 0.5 * -1.0) / 2)
    assert frac.item() == 0.0
    assert weights[0, :2].tolist() == pytest.approx([4.0, 0.5])
    loss.backward()  # d/dlogp of -w * r * A at r = 1: -w * A / tokens
    assert new.grad is not None
    assert new.grad[0].tolist() == pytest.approx([-1.0, 0.25, 0.0])


def test_value_loss_takes_the_larger_error() -> None:
    # old 0, new 1, return 1: unclipped error 0, clipped value 0.2 -> error 0.64.
    values, old, returns, mask = t([1.0, 0.1]), t([0.0, 0.0]), t([1.0, 0.1]), t([1, 1])
    loss, clipfrac = value_loss(values, old, returns, mask, clip_range=0.2)
    assert loss.item() == pytest.approx(0.5 * (0.64 + 0.0) / 2)
    assert clipfrac.item() == pytest.approx(0.5)
    plain, zero = value_loss(t([1.0]), t([0.0]), t([3.0]), t([1]), clip_range=None)
    assert plain.item() == pytest.approx(0.5 * 4.0)
    assert zero.item() == 0.0


def test_group_normalized_advantages_by_hand() -> None:
    scores = torch.tensor([1.0, 0.0, 0.5, 0.5, 0.2])
    groups = torch.tensor([7, 7, 3, 3, 9])
    adv = group_normalized_advantages(scores, groups, eps=0.0 + 1e-12)
    # group 7: mean 0.5, population std 0.5 -> (+1, -1); group 3: all equal -> 0;
    # group 9: a single sample -> 0.
    assert adv.tolist() == pytest.approx([1.0, -1.0, 0.0, 0.0, 0.0], abs=1e-6)
    with pytest.raises(ValueError, match="same 1-d shape"):
        group_normalized_advantages(scores, groups[:2])


# -- loss_agg_mode: how per-token losses add up over a global batch ----------------------

# Two responses of a global batch, split in two micro-batches: lengths 1 and 3 of R = 4.
LOSS = t([2.0, 9.0, 9.0, 9.0], [1.0, 2.0, 3.0, 9.0])
MASK = t([1, 0, 0, 0], [1, 1, 1, 0])


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("token-mean", (2.0 + 1.0 + 2.0 + 3.0) / 4),  # every real token alike
        ("seq-mean-token-mean", (2.0 / 1 + 6.0 / 3) / 2),  # every response alike
        ("seq-mean-token-sum-norm", (2.0 / 4 + 6.0 / 4) / 2),  # Dr. GRPO: over the horizon
    ],
)
def test_agg_loss_modes_by_hand_and_the_same_however_the_batch_is_split(mode, expected) -> None:
    whole = agg_loss(LOSS, MASK, LossScale.of(mode, [MASK]))
    assert whole.item() == pytest.approx(expected)
    scale = LossScale.of(mode, [MASK[:1], MASK[1:]])
    split = agg_loss(LOSS[:1], MASK[:1], scale) + agg_loss(LOSS[1:], MASK[1:], scale)
    assert split.item() == pytest.approx(expected)


def test_agg_loss_of_padding_only_is_zero_and_a_bad_mode_is_named() -> None:
    empty = torch.zeros_like(MASK)
    for mode in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"):
        assert agg_loss(LOSS, empty, LossScale.of(mode, [empty])).item() == 0.0
    with pytest.raises(ValueError, match="unknown loss_agg_mode 'sum'"):
        agg_loss(LOSS, MASK, LossScale("sum", tokens=4.0, sequences=2))  # type: ignore[arg-type]


def test_policy_and_value_losses_take_the_scale() -> None:
    zeros = torch.zeros_like(LOSS)
    scale = LossScale.of("seq-mean-token-mean", [MASK])
    # ratio 1, advantage -LOSS: the surrogate per token is LOSS itself.
    loss, _ = ppo_policy_loss(zeros, zeros, -LOSS, MASK, scale=scale)
    assert loss.item() == pytest.approx(2.0)
    # 0.5 * (v - R)^2 with v - R = sqrt(2 * LOSS): LOSS per token again.
    value, _ = value_loss((2 * LOSS).sqrt(), zeros, zeros, MASK, clip_range=None, scale=scale)
    assert value.item() == pytest.approx(2.0)
