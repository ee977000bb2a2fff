"""Rollout engines on the small GPT: the KV cache gives the recompute path's tokens and
log-probs, responses end at EOS or a stop sequence, and ``n`` responses per prompt."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from rollouts import assert_cache_matches_recompute

from rlhfjob.models import GPT, GPTConfig, sample_next
from rlhfjob.rollout import (
    CachedEngine,
    GenerationSettings,
    RecomputeEngine,
    engine_for,
)

V = 16


def tiny() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=V, block_size=48, n_layer=2, n_head=2, n_embd=16)).eval()


def left_padded() -> tuple[torch.Tensor, torch.Tensor]:
    """Three prompts of 5, 3 and 1 tokens, left-padded to 5."""
    ids = torch.randint(1, V, (3, 5), generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [0, 0, 0, 0, 1]])
    return ids * mask, mask


def test_cached_logits_match_a_full_forward_step_by_step() -> None:
    model = tiny()
    ids, mask = left_padded()
    with torch.no_grad():
        logits, cache = model.decode_logits(ids, mask)
        for _ in range(6):
            assert torch.allclose(logits, model(ids, mask)[:, -1], atol=1e-5)
            token = logits.argmax(-1, keepdim=True)  # (B, 1)
            ids = torch.cat([ids, token], dim=1)
            mask = torch.cat([mask, torch.ones_like(token)], dim=1)
            logits, cache = model.decode_logits(token, mask, cache)
    assert cache.length == ids.shape[1]


SETTINGS = {
    "greedy": GenerationSettings(max_new_tokens=24, temperature=0),
    "sampled": GenerationSettings(max_new_tokens=24, temperature=1.3),
    "top-k/top-p, n=3, eos": GenerationSettings(
        max_new_tokens=24, top_k=8, top_p=0.9, eos_token_ids=(3, 4), n=3, pad_token_id=15
    ),
}


@pytest.mark.parametrize("settings", SETTINGS.values(), ids=SETTINGS.keys())
def test_cache_gives_the_recompute_tokens_and_logprobs(settings: GenerationSettings) -> None:
    model = tiny()
    ids, mask = left_padded()
    assert_cache_matches_recompute(model, ids, mask, settings, seed=7)


class Scripted(torch.nn.Module):
    """Row r says ``script[r][t]`` as its t-th response token, whatever the input."""

    def __init__(self, script: list[list[int]], prompt_len: int) -> None:
        super().__init__()
        self.script, self.prompt_len, self.calls = script, prompt_len, 0

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        self.calls += 1
        t = ids.shape[1] - self.prompt_len
        logits = torch.zeros(ids.shape[0], ids.shape[1], V)
        for r, row in enumerate(self.script):
            logits[r, -1, row[min(t, len(row) - 1)]] = 100.0
        return logits


def test_responses_end_at_eos_or_a_stop_sequence_and_are_right_padded() -> None:
    script = [[3, 9, 9, 9, 9, 9], [5, 6, 7, 8, 9, 9], [5, 7, 8, 3, 9, 9]]
    model = Scripted(script, prompt_len=2)
    settings = GenerationSettings(
        max_new_tokens=6,
        temperature=0,
        eos_token_ids=(3,),
        stop_sequences=((7, 8),),
        pad_token_id=0,
    )
    out = RecomputeEngine(model).generate(torch.ones(3, 2, dtype=torch.long), None, settings)
    assert out.response_ids.tolist() == [[3, 0, 0, 0, 0, 0], [5, 6, 7, 8, 0, 0], [5, 7, 8, 0, 0, 0]]
    assert out.response_mask.tolist() == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 1, 0, 0, 0],
    ]
    assert out.lengths.tolist() == [1, 4, 3]
    assert (out.logprobs[out.response_mask == 0] == 0).all()
    assert model.calls == 4  # stopped once every response had ended, not at 6


def test_n_responses_per_prompt_are_grouped_by_prompt() -> None:
    model = tiny()
    ids, mask = left_padded()
    settings = GenerationSettings(max_new_tokens=8, temperature=2.0, n=4)
    out = engine_for(model).generate(
        ids, mask, settings, generator=torch.Generator().manual_seed(0)
    )
    assert out.response_ids.shape == (12, 8) and out.prompt_ids.shape == (12, 5)
    assert torch.equal(out.prompt_ids, ids.repeat_interleave(4, dim=0))
    assert torch.equal(out.prompt_mask, mask.repeat_interleave(4, dim=0))
    group = out.response_ids[:4]
    assert len({tuple(row.tolist()) for row in group}) > 1  # independent draws


def test_engine_for_picks_the_cache_where_the_model_has_one() -> None:
    assert isinstance(engine_for(tiny()), CachedEngine)
    assert isinstance(engine_for(Scripted([[1]], 1)), RecomputeEngine)


def test_top_p_keeps_the_smallest_set_that_reaches_it() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log().expand(2000, 4)
    drawn = sample_next(
        logits, temperature=1.0, top_p=0.8, generator=torch.Generator().manual_seed(0)
    )
    assert set(drawn.tolist()) == {0, 1}  # 0.5 + 0.3 reaches 0.8
    only_top = sample_next(logits, temperature=1.0, top_p=0.1)
    assert (only_top == 0).all()


def test_cache_and_settings_errors_say_what_to_fix() -> None:
    model = tiny()
    ids = torch.ones(2, 40, dtype=torch.long)
    with pytest.raises(ValueError, match="block_size"):
        CachedEngine(model).generate(ids, None, GenerationSettings(max_new_tokens=16))
    with pytest.raises(ValueError, match="cover the 0 cached and 3 new"):
        model.decode_logits(ids[:, :3], torch.ones(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="must match prompt_ids"):
        CachedEngine(model).generate(ids, ids[:, :3], GenerationSettings(max_new_tokens=1))
    for bad, match in [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"temperature": -1.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_k": 0}, "top_k"),
        ({"n": 0}, "n \\(responses per prompt\\)"),
        ({"eos_token_ids": (-1,)}, "token ids"),
        ({"stop_sequences": ((),)}, "stop_sequences"),
    ]:
        with pytest.raises(ValueError, match=match):
            GenerationSettings(**{"max_new_tokens": 4, **bad})


def test_a_seed_repeats_the_draws_and_top_k_one_is_greedy() -> None:
    model = tiny()
    ids, mask = left_padded()
    engine = engine_for(model)

    def draw(**kw: Any) -> torch.Tensor:
        settings = GenerationSettings(max_new_tokens=6, **kw)
        return engine.generate(ids, mask, settings).response_ids

    torch.manual_seed(1)
    a = draw()
    torch.manual_seed(1)
    assert torch.equal(a, draw())
    greedy = draw(temperature=0)
    assert torch.equal(greedy, draw(top_k=1))
    assert torch.equal(greedy[:, 0], model(ids, mask)[:, -1].argmax(-1))
