"""Sampling and log-probabilities for any causal LM that maps token ids to logits.

Both the small GPT and the Hugging Face adapter are called as
``model(input_ids, attention_mask) -> logits (B, T, V)``; everything here is
written against that one signature, so PPO and GRPO do not care which model
they drive.

Prompts are left-padded (``prompt_mask`` 0 on the padding); responses are
right-padded after the end-of-sequence token (``response_mask`` 0 after it).
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

__all__ = [
    "CausalLM",
    "generate_tokens",
    "response_log_probs",
    "sample_next",
    "token_log_probs",
]


class CausalLM(Protocol):
    def __call__(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor: ...


def token_log_probs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) per position: logits (B, T, V), targets (B, T) -> (B, T)."""
    logp = F.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T)


def response_log_probs(
    model: CausalLM,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    num_response: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of the last ``num_response`` tokens of ``input_ids``.

    The logit at position t predicts token t+1, so the response's R tokens are
    scored by the R logits that precede them. Returns (log_probs (B, R),
    logits (B, R, V)); the logits are returned for entropy metrics.
    """
    logits = model(input_ids, attention_mask)  # (B, T, V)
    logits = logits[:, -num_response - 1 : -1]  # (B, R, V)
    return token_log_probs(logits, input_ids[:, -num_response:]), logits


def sample_next(
    logits: torch.Tensor,
    *,
    temperature: float,
    top_k: int | None = None,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token per row from next-token logits (B, V) -> (B,).

    ``temperature`` 0 is greedy (argmax; ``top_k`` and ``top_p`` then change
    nothing). ``top_k`` keeps the k most likely tokens (ties at the k-th are all
    kept); ``top_p`` < 1 keeps the smallest set of most likely tokens whose
    probability reaches ``top_p`` (nucleus sampling; the most likely token is
    always kept). Draws from ``generator``, else torch's global RNG; with
    ``top_p`` 1 the draws are the same as ``generate_tokens`` has always made.
    """
    logits = logits.float()  # (B, V)
    if temperature == 0:
        return logits.argmax(dim=-1)  # (B,)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V) each
        sorted_probs = F.softmax(sorted_logits, dim=-1)  # (B, V)
        # A token goes when the tokens more likely than it already reach top_p.
        drop = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p  # (B, V)
        drop[:, 0] = False
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = F.softmax(logits, dim=-1)  # (B, V)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)  # (B,)


@torch.no_grad()
def generate_tokens(
    model: CausalLM,
    prompt_ids: torch.Tensor,
    max_new_tokens: int,
    *,
    prompt_mask: torch.Tensor | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``max_new_tokens`` tokens after each prompt.

    Always returns exactly ``max_new_tokens`` columns, so responses of one run
    stack into one tensor: (response_ids (B, R), response_mask (B, R)). After a
    sequence emits ``eos_token_id`` (which stays in the response, mask 1) its
    later tokens are ``pad_token_id`` with mask 0. ``temperature`` 0 means
    greedy. Sampling draws from torch's global RNG, so a seeded run repeats.
    The whole sequence is recomputed each step (no KV cache): quadratic in the
    response length, and kept as it is because the sort examples' results are
    pinned to it bit for bit. ``rlhfjob.rollout`` has the cached engines for
    long responses.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    batch = prompt_ids.shape[0]
    if prompt_mask is None:
        prompt_mask = torch.ones_like(prompt_ids)
    ids, mask = prompt_ids, prompt_mask
    done = torch.zeros(batch, dtype=torch.bool, device=prompt_ids.device)
    new_tokens, new_mask = [], []
    for _ in range(max_new_tokens):
        logits = model(ids, mask)[:, -1, :]  # (B, V)
        token = sample_next(logits, temperature=temperature, top_k=top_k)  # (B,)
        token = torch.where(done, torch.full_like(token, pad_token_id), token)
        new_tokens.append(token)
        new_mask.append((~done).to(prompt_mask.dtype))
        if eos_token_id is not None:
            done = done | (token == eos_token_id)
        ids = torch.cat([ids, token[:, None]], dim=1)  # (B, T+1)
        mask = torch.cat([mask, new_mask[-1][:, None]], dim=1)  # (B, T+1)
    return torch.stack(new_tokens, dim=1), torch.stack(new_mask, dim=1)
