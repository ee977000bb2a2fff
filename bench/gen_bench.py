"""Generation: the rollout engine's KV cache against recomputing the sequence per token.

``python bench/gen_bench.py [LENGTHS]`` (default ``16,128,512``) times, on one
torch thread, a batch of ``BATCH`` prompts of ``PROMPT`` tokens answered with
responses of each length (no EOS, so every response runs to the length):

- ``cached``: ``rlhfjob.rollout.CachedEngine`` (the small GPT's ``KVCache``,
  the Hugging Face model's own cache);
- ``recompute``: ``rlhfjob.rollout.RecomputeEngine``, the whole sequence again
  for every new token (what generation did before the cache).

Models: the sort examples' small GPT (2 layers, 4 heads, 64 wide) and a tiny
Hugging Face Llama (2 layers, 64 wide, grouped-query attention), both random
and built here. Each figure is the best of ``REPEATS`` runs after a short
warm-up, except the recompute at the longest length, which runs once (it is
the slow one, and one run already says how slow). Prints one ``RESULT`` JSON
line: tokens per second by model, length and method.
"""

from __future__ import annotations

import json
import sys
import time

import torch

from rlhfjob.models import GPT, GPTConfig, HFCausalLM
from rlhfjob.rollout import CachedEngine, GenerationSettings, RecomputeEngine

BATCH = 8  # prompts per call; a GRPO rollout batch is larger still
PROMPT = 16
VOCAB = 256
REPEATS = 5


def small_gpt(max_tokens: int) -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=VOCAB, block_size=max_tokens, n_layer=2, n_head=4, n_embd=64)
    return GPT(config).eval()


def tiny_llama(max_tokens: int) -> HFCausalLM:
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_tokens,
    )
    return HFCausalLM(transformers.LlamaForCausalLM(config))


def measure(model: torch.nn.Module, lengths: list[int]) -> dict[str, dict[str, float]]:
    """Tokens per second of each method at each length: {length: {method: tokens/s}}.

    The two methods take turns within every round, so a load that comes and
    goes on a shared machine touches both alike.
    """
    prompt = torch.randint(0, VOCAB, (BATCH, PROMPT), generator=torch.Generator().manual_seed(0))
    engine, again = CachedEngine(model), RecomputeEngine(model)

    def cached(length: int) -> None:
        engine.generate(prompt, None, GenerationSettings(max_new_tokens=length))

    def recompute(length: int) -> None:
        again.generate(prompt, None, GenerationSettings(max_new_tokens=length))

    cached(4), recompute(4)  # warm-up: first-call allocations and dispatch
    figures = {}
    for length in lengths:
        best = {"cached": float("inf"), "recompute": float("inf")}
        for round_ in range(REPEATS):
            for name, fn in (("cached", cached), ("recompute", recompute)):
                if name == "recompute" and round_ and length == max(lengths):
                    continue  # one run of the slowest says enough
                start = time.perf_counter()
                fn(length)
                best[name] = min(best[name], time.perf_counter() - start)
        figures[str(length)] = {name: BATCH * length / s for name, s in best.items()}
    return figures


def main(argv: list[str]) -> None:
    lengths = [int(n) for n in argv[0].split(",")] if argv else [16, 128, 512]
    torch.set_num_threads(1)
    longest = PROMPT + max(lengths)
    result = {
        "batch": BATCH,
        "prompt": PROMPT,
        "models": {
            "small GPT": measure(small_gpt(longest), lengths),
            "tiny HF Llama": measure(tiny_llama(longest), lengths),
        },
    }
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
