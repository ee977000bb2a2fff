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
    always kept). Draws from ``generator``, else torch's global RNG. Generation
    loops over it in ``rlhfjob.rollout``.
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
