"""A job entrypoint for the runtime tests: GRPO on text prompts from ``runtime.data_path``
with a Hugging Face model and its tokenizer by ``model_path`` (``tests/support/textmodels``).

Run by `rlhfjob run` (every process imports it; only the driver passes the
__main__ guard) and in-process by the tests, for the same-results check.
"""

from __future__ import annotations

from typing import Any

import torch

from rlhfjob import Engine, Environment, Trainer
from rlhfjob.algorithms.grpo import GroupPolicyInference, GRPOTrainer, group_advantages
from rlhfjob.algorithms.ppo import PolicyReference, RewardInference


def even_share(data: dict[str, Any]) -> torch.Tensor:
    """The share of even token ids in each response; the file's ``answer`` column must
    have come along, one string per response."""
    answers = data["answer"]
    ids, mask = data["response_ids"], data["response_mask"].bool()  # (B, R) each
    assert len(answers) == ids.shape[0] and all(isinstance(a, str) for a in answers), answers
    return ((ids % 2 == 0) & mask).float().sum(1) / mask.sum(1).clamp(min=1)  # (B,)


def build(config: Any = None) -> Engine:
    policy, reference = GroupPolicyInference("policy"), PolicyReference("reference")
    reward, trainer = RewardInference("reward", reward_fn=even_share), GRPOTrainer("grpo_policy")

    def env_flow(batch: dict[str, Any]) -> dict[str, Any]:
        out = policy.forward_step(batch)
        return reward.forward_step(out, reference.forward_step(out))

    def trainer_flow(batch: list[dict[str, Any]]) -> None:
        trainer.train_step(batch)

    engine = Engine(Environment(env_flow), Trainer(trainer_flow), config=config)
    return engine.set_parameter_sync(trainer, policy).set_replay_sample_manager(group_advantages)


if __name__ == "__main__":
    build().learn()
