"""Generation behind one small interface, so a serving engine can replace the local ones.

``engine_for(model).generate(prompt_ids, attention_mask, settings)`` returns a
``Rollout``: ``settings.n`` right-padded responses per prompt with their masks
and log-probs. See ``rlhfjob.rollout.engine`` for the engines.
"""

from rlhfjob.rollout.engine import (
    CachedEngine,
    CachedLM,
    RecomputeEngine,
    RolloutEngine,
    engine_for,
)
from rlhfjob.rollout.settings import GenerationSettings, Rollout

__all__ = [
    "CachedEngine",
    "CachedLM",
    "GenerationSettings",
    "RecomputeEngine",
    "Rollout",
    "RolloutEngine",
    "engine_for",
]
