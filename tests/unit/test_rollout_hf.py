"""Hugging Face causal LMs decode with their own cache: the recompute path's tokens and
log-probs, left padding that changes nothing, and the tokens of ``model.generate``.

GPT-2, Llama and Qwen2, each a tiny random model built here from a config: no hub.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from rollouts import assert_cache_matches_recompute  # noqa: E402

from rlhfjob.models import HFCausalLM  # noqa: E402
from rlhfjob.rollout import (  # noqa: E402
    GenerationSettings,
    engine_for,
)

V = 32


def tiny(kind: str) -> HFCausalLM:
    torch.manual_seed(0)
    if kind == "gpt2":
        model = transformers.GPT2LMHeadModel(
            transformers.GPT2Config(vocab_size=V, n_positions=64, n_embd=16, n_layer=2, n_head=2)
        )
    else:
        config_class, model_class = {
            "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
            "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        }[kind]
        model = model_class(
            config_class(
                vocab_size=V,
                hidden_size=16,
                intermediate_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,  # grouped-query attention, as the real ones
                max_position_embeddings=64,
            )
        )
    return HFCausalLM(model)


KINDS = ["gpt2", "llama", "qwen2"]


def left_padded() -> tuple[torch.Tensor, torch.Tensor]:
    """Three prompts of 6, 4 and 2 tokens, left-padded to 6 (padding id 0)."""
    ids = torch.randint(1, V, (3, 6), generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([[1] * 6, [0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1]])
    return ids * mask, mask


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("temperature", [0.0, 1.0], ids=["greedy", "sampled"])
def test_cache_gives_the_recompute_tokens_and_logprobs(kind: str, temperature: float) -> None:
    model = tiny(kind)
    ids, mask = left_padded()
    settings = GenerationSettings(
        max_new_tokens=20, temperature=temperature, top_k=20, top_p=0.95, eos_token_ids=(7,), n=2
    )
    assert_cache_matches_recompute(model, ids, mask, settings, seed=3)


@pytest.mark.parametrize("kind", KINDS)
def test_left_padding_and_hf_generate_agree_with_one_prompt_alone(kind: str) -> None:
    model = tiny(kind)
    ids, mask = left_padded()
    settings = GenerationSettings(max_new_tokens=12, temperature=0)
    batch = engine_for(model).generate(ids, mask, settings)
    for row in range(3):
        alone = ids[row : row + 1, mask[row].bool()]  # (1, P_row): no padding at all
        single = engine_for(model).generate(alone, None, settings)
        assert torch.equal(single.response_ids[0], batch.response_ids[row]), row
    # Transformers' own greedy loop over the same left-padded batch.
    model.model.generation_config.eos_token_id = None
    with torch.no_grad():
        theirs = model.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=12,
            do_sample=False,
            pad_token_id=0,
        )[:, ids.shape[1] :]
    assert torch.equal(theirs, batch.response_ids)


class Spelling(torch.nn.Module):
    """Answers row r with ``script[r]``, one token a step, whatever the prompt."""

    def __init__(self, script: list[list[int]], vocab: int, prompt_len: int) -> None:
        super().__init__()
        self.script, self.vocab, self.prompt_len = script, vocab, prompt_len

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        t = ids.shape[1] - self.prompt_len
        logits = torch.zeros(ids.shape[0], ids.shape[1], self.vocab)
        for r, row in enumerate(self.script):
            logits[r, -1, row[min(t, len(row) - 1)]] = 100.0
        return logits


def test_a_stop_string_ends_a_response_however_the_tokenizer_spelled_it() -> None:
    """A response ends at the token that completes a stop string, whether that is one
    token, letter by letter, or a token overhanging it; "answer" in the prompt alone
    ends nothing, and without the tokenizer the engine says what it needs."""
    from textmodels import make_tokenizer

    from rlhfjob.rollout import RecomputeEngine

    tok = make_tokenizer()
    whole = tok.encode(" The answer is 5", add_special_tokens=False)
    letters = [tok.convert_tokens_to_ids(c) for c in "Theanswerxyz"]
    overhang = [tok.convert_tokens_to_ids(t) for t in ("a", "ssistant", "s")]
    filler = tok.encode(" 1 2 3 4 5 6 7 8 9 0 1 2", add_special_tokens=False)
    script = [whole + filler, letters + filler, overhang + filler, filler]
    prompt = torch.tensor([tok.encode("answer", add_special_tokens=False)[-1:]] * 4)
    model = Spelling(script, len(tok), prompt_len=1)
    settings = GenerationSettings(
        max_new_tokens=12, temperature=0, stop_strings=("answer", "assist"), pad_token_id=0
    )
    out = RecomputeEngine(model, tok).generate(prompt, None, settings)
    pairs = zip(out.response_ids, out.response_mask, strict=True)
    texts = [tok.decode(ids[mask.bool()]) for ids, mask in pairs]
    assert texts[0].endswith("answer") and "is" not in texts[0], texts[0]
    assert texts[1] == "Theanswer"
    assert texts[2] == "assistant"  # its last token overhangs the stop string
    assert int(out.lengths[3]) == 12  # never said it: runs to max_new_tokens
    assert (out.response_ids[out.response_mask == 0] == 0).all()
    with pytest.raises(ValueError, match="need the tokenizer"):
        RecomputeEngine(model).generate(prompt, None, settings)
    with pytest.raises(ValueError, match="stop_strings must be non-empty strings"):
        GenerationSettings(max_new_tokens=1, stop_strings=("",))
