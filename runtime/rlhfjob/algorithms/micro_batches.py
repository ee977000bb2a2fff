"""Micro-batches by a token budget (``train_max_tokens_per_micro_batch``) for the trainers.

The runtime cuts a global batch into ``train_micro_batch_size`` samples each; a
trainer with a token budget joins those pieces again (they are in sample order) and
re-cuts them so that each micro-batch holds as many whole samples as fit the budget,
counting each sample's real tokens (``prompt_mask`` + ``response_mask``). Greedy and in
order, as OpenRLHF's packing: deterministic, and no sample moves. (verl's
``rearrange_micro_batches`` instead balances the pieces and refuses a sample over the
budget; here one over the budget trains alone, so a rare long response costs memory,
not the job.) Each micro-batch is then trimmed of the padding columns no sample in it
uses (the left padding of prompts, the right padding of responses), which is where the
memory goes down: a micro-batch of short responses is short.

The loss does not change with the cut: the trainers scale every micro-batch's loss by
the whole global batch (``losses.LossScale``, its ``horizon`` included).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["PROMPT_KEYS", "RESPONSE_KEYS", "join", "pack_by_tokens", "sample_tokens", "token_cut"]

# Per-token keys the PPO and GRPO trainers read, by the columns they align with.
PROMPT_KEYS = ("prompt_ids", "prompt_mask")
RESPONSE_KEYS = (
    "response_ids",
    "response_mask",
    "old_logprobs",
    "ref_logprobs",
    "advantages",
    "values",
    "returns",
    "rewards",
)


def join(batches: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Collated micro-batches back into one batch, in order: tensors concatenated along
    the batch dim, per-sample lists chained. Keys are the first batch's."""
    out: dict[str, Any] = {}
    for key, first in batches[0].items():
        values = [b[key] for b in batches]
        out[key] = (
            torch.cat(values) if isinstance(first, torch.Tensor) else [v for b in values for v in b]
        )
    return out


def sample_tokens(batch: dict[str, Any]) -> torch.Tensor:
    """Real tokens per sample (B,): prompt tokens (all, without a ``prompt_mask``) plus
    response tokens."""
    response = batch["response_mask"].sum(-1)  # (B,)
    prompt_mask = batch.get("prompt_mask")
    if prompt_mask is None:
        return response + batch["prompt_ids"].shape[-1]
    return response + prompt_mask.sum(-1)  # (B,)


def pack_by_tokens(tokens: Sequence[int], budget: int) -> list[range]:
    """Consecutive runs of samples whose tokens sum to at most ``budget`` each, greedily in
    order; a sample over the budget gets a run of its own. ``[]`` for no samples."""
    runs: list[range] = []
    start, used = 0, 0
    for i, n in enumerate(tokens):
        if i > start and used + n > budget:
            runs.append(range(start, i))
            start, used = i, 0
        used += n
    if len(tokens) > start:
        runs.append(range(start, len(tokens)))
    return runs


def _rows(batch: dict[str, Any], rows: range) -> dict[str, Any]:
    return {
        k: v[rows.start : rows.stop]
        if isinstance(v, torch.Tensor)
        else list(v[rows.start : rows.stop])
        for k, v in batch.items()
    }


def _trim(batch: dict[str, Any]) -> dict[str, Any]:
    """Drop the leading prompt columns and trailing response columns that are padding in
    every row (at least one column of each stays), so positions and logits of real
    tokens are unchanged: positions count real tokens, and padding is never attended to."""
    out = dict(batch)
    prompt_mask = batch.get("prompt_mask")
    if prompt_mask is not None:
        used = prompt_mask.bool().any(0)  # (P,)
        first = int(used.nonzero()[0, 0]) if bool(used.any()) else used.numel() - 1
        for key in PROMPT_KEYS:
            if key in out:
                out[key] = out[key][:, first:]
    used = batch["response_mask"].bool().any(0)  # (R,)
    last = int(used.nonzero()[-1, 0]) + 1 if bool(used.any()) else 1
    for key in RESPONSE_KEYS:
        if isinstance(out.get(key), torch.Tensor):
            out[key] = out[key][:, :last]
    return out


def token_cut(batches: Sequence[dict[str, Any]], budget: int) -> list[dict[str, Any]]:
    """The samples of ``batches`` (collated micro-batches of one global batch) re-cut into
    micro-batches of at most ``budget`` real tokens each (``pack_by_tokens``), each
    trimmed of its padding columns. ``[]`` for no batches."""
    if not batches:
        return []
    whole = join(batches)
    tokens = [int(n) for n in sample_tokens(whole)]
    return [_trim(_rows(whole, run)) for run in pack_by_tokens(tokens, budget)]
