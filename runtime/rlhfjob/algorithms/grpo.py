"""GRPO: PPO without a critic; a response's advantage is its score against its group.

env flow:     GroupPolicyInference -> PolicyReference -> RewardInference
replay:       ``group_advantages`` (``engine.set_replay_sample_manager``)
trainer flow: GRPOTrainer

Each training prompt is answered ``group_size`` times: ``build_dataset`` tags
every prompt with its index as ``group_id`` and ``forward_step`` samples each
prompt of a batch ``group_size`` times. The prompt stream may shuffle freely
(the copies are made after it), so an episode yields ``sample_per_episode x
group_size`` samples: run GRPO with ``runtime.stream_data_loader_type:
dynamic``, and size ``train_*_batch_size`` in responses.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch

from rlhfjob.algorithms.configs import GroupPolicyInferenceConfig, GRPOTrainerConfig
from rlhfjob.algorithms.losses import group_normalized_advantages
from rlhfjob.algorithms.ppo import PolicyInference, PolicyTrainer

__all__ = ["GRPOTrainer", "GroupPolicyInference", "group_advantages"]


class GroupPolicyInference(PolicyInference):
    """The policy, sampling ``group_size`` responses per training prompt.

    Settings: ``GroupPolicyInferenceConfig``. A prompt that already has a
    ``group_id`` keeps it; otherwise its index in the dataset becomes its
    ``group_id``. ``eval_step`` answers each prompt once.
    """

    config_class = GroupPolicyInferenceConfig
    config: GroupPolicyInferenceConfig

    def build_dataset(self, prompts: list[Any], is_eval: bool = False) -> list[Any]:
        prompts = super().build_dataset(prompts, is_eval)
        if is_eval:
            return prompts
        return [{"group_id": torch.tensor(i), **prompt} for i, prompt in enumerate(prompts)]

    def forward_step(self, data: dict[str, Any], iteration: int = 0) -> dict[str, Any]:
        n = self.config.group_size
        repeated = {
            key: value.repeat_interleave(n, dim=0)
            if isinstance(value, torch.Tensor)
            else [item for item in value for _ in range(n)]
            for key, value in data.items()
        }
        return super().forward_step(repeated, iteration)


def group_advantages(episode_buffers: list[Any]) -> list[dict[str, Any]]:
    """Replay sample manager: every sample of the buffers, with GRPO advantages.

    Each buffer has ``.episode_id`` and ``.buffer`` (per-sample dicts holding
    ``scores`` (), ``group_id`` () and ``response_mask`` (R,)). Samples are
    grouped by (episode, group_id), so the same prompt drawn again in a later
    episode forms a new group. Adds ``advantages`` (R,): the sample's
    normalised score on every real response token, 0 on padding.
    """
    samples: list[dict[str, Any]] = []
    keys: list[tuple[int, int]] = []
    for episode in episode_buffers:
        for sample in episode.buffer:
            if "scores" not in sample or "group_id" not in sample:
                raise ValueError(
                    "group_advantages needs 'scores' and 'group_id' in every sample: use "
                    "GroupPolicyInference for the policy and RewardInference last in the env flow"
                )
            samples.append(sample)
            keys.append((int(episode.episode_id), int(sample["group_id"])))
    if not samples:
        return []
    index: dict[tuple[int, int], int] = defaultdict(lambda: len(index))
    group_ids = torch.tensor([index[k] for k in keys])
    scores = torch.stack([torch.as_tensor(s["scores"]).float() for s in samples])
    advantages = group_normalized_advantages(scores, group_ids)
    return [
        {**s, "advantages": adv * s["response_mask"].float()}
        for s, adv in zip(samples, advantages, strict=True)
    ]


class GRPOTrainer(PolicyTrainer):
    """The GRPO policy loss: the clipped surrogate on group advantages, plus
    ``kl_coef`` (0.04) x the k3 estimate of KL to the reference, in the loss.

    Settings: ``GRPOTrainerConfig``: PolicyTrainer's, except that advantages,
    already normalised per group, are not whitened again.
    """

    config_class = GRPOTrainerConfig
    config: GRPOTrainerConfig
