"""What every rollout engine test checks: the cached engine agrees with recompute."""

from __future__ import annotations

from typing import Any

import torch

from rlhfjob.models import response_log_probs
from rlhfjob.rollout import CachedEngine, GenerationSettings, RecomputeEngine, engine_for


def assert_cache_matches_recompute(
    model: Any, ids: torch.Tensor, mask: torch.Tensor, settings: GenerationSettings, seed: int
) -> None:
    """``engine_for(model)`` is the cached engine, and from the same seed it gives the
    recompute engine's tokens and masks exactly and its log-probs within 1e-5; those
    log-probs are the model's own, as a trainer recomputes them in one pass."""
    engine = engine_for(model)
    assert isinstance(engine, CachedEngine)
    cached = engine.generate(ids, mask, settings, generator=torch.Generator().manual_seed(seed))
    recomputed = RecomputeEngine(model).generate(
        ids, mask, settings, generator=torch.Generator().manual_seed(seed)
    )
    assert torch.equal(cached.response_ids, recomputed.response_ids)
    assert torch.equal(cached.response_mask, recomputed.response_mask)
    assert torch.allclose(cached.logprobs, recomputed.logprobs, atol=1e-5, rtol=0)
    full = torch.cat([cached.prompt_ids, cached.response_ids], dim=1)
    full_mask = torch.cat([cached.prompt_mask, cached.response_mask], dim=1)
    with torch.no_grad():
        again = response_log_probs(model, full, full_mask, settings.max_new_tokens)[0]
    assert torch.allclose(cached.logprobs, again * cached.response_mask, atol=1e-5, rtol=0)
