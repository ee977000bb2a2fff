"""Rewards over text: reward functions called as TRL calls them, a reward model from a
local path, and built-in verifiers (``rlhfjob.rewards.arith``).

``build_scorer`` assembles one reward module's sources from its settings (see
``rlhfjob.algorithms.configs.RewardConfig``); ``rlhfjob.rewards.functions`` holds the
calling convention, ``rlhfjob.rewards.model`` the reward model.
"""

from rlhfjob.rewards.functions import TextBatch, TrainerState, call_reward, is_trl_style, text_batch
from rlhfjob.rewards.model import RewardModel
from rlhfjob.rewards.scorer import Scorer, build_scorer

__all__ = [
    "RewardModel",
    "Scorer",
    "TextBatch",
    "TrainerState",
    "build_scorer",
    "call_reward",
    "is_trl_style",
    "text_batch",
]
