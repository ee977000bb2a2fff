"""What a rollout engine is asked for (``GenerationSettings``) and what it returns
(``Rollout``): plain values, so a serving engine in another process can take them."""

from __future__ import annotations

import dataclasses

import torch

__all__ = ["GenerationSettings", "Rollout"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class GenerationSettings:
    """How responses are sampled.

    A response ends at the first token of ``eos_token_ids``, at the end of the
    first of ``stop_sequences`` (token-id sequences) that it produces, or at the
    token that completes one of ``stop_strings`` in the decoded text, however the
    tokenizer split it (as ``transformers``' ``generate(stop_strings=...)``; the
    engine needs the tokenizer for them). The ending tokens stay in the response
    (mask 1), everything after them is ``pad_token_id`` (mask 0). Without any of
    them, every response runs to ``max_new_tokens``. ``temperature`` 0 is greedy,
    and ``top_k``/``top_p`` then change nothing. ``n`` responses are drawn per
    prompt.
    """

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    stop_sequences: tuple[tuple[int, ...], ...] = ()
    stop_strings: tuple[str, ...] = ()
    pad_token_id: int = 0
    n: int = 1

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0: greedy), got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None (all tokens), got {self.top_k}")
        if self.n < 1:
            raise ValueError(f"n (responses per prompt) must be >= 1, got {self.n}")
        bad = [t for t in (*self.eos_token_ids, self.pad_token_id) if t < 0]
        if bad:
            raise ValueError(f"token ids must be >= 0, got {bad}")
        if any(len(s) == 0 for s in self.stop_sequences):
            raise ValueError(f"stop_sequences must not hold an empty one: {self.stop_sequences}")
        if any(not isinstance(s, str) or not s for s in self.stop_strings):
            raise ValueError(f"stop_strings must be non-empty strings, got {self.stop_strings}")


@dataclasses.dataclass(frozen=True)
class Rollout:
    """Responses to B prompts, ``n`` each: N = B * n rows, prompt i's in rows i*n .. i*n+n-1.

    ``response_ids`` and ``response_mask`` are (N, max_new_tokens), right-padded
    after each response's end, so rollouts of one run stack; ``logprobs`` (N, R)
    is log p(token) under the model's own distribution (temperature 1, no top-k
    or top-p: what a trainer recomputes), 0 on padding. ``prompt_ids`` and
    ``prompt_mask`` (N, P) are the prompts repeated to match.
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    logprobs: torch.Tensor

    @property
    def lengths(self) -> torch.Tensor:
        """Tokens in each response, its end included: (N,)."""
        return self.response_mask.sum(dim=1)
