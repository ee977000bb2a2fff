"""A task with a checkable reward: write the prompt's digits in sorted order.

Vocabulary (12 tokens): ``0``-``9`` are the digits, ``SEP`` (10) ends the
prompt, ``PAD`` (11) pads. A prompt is ``num_digits`` random digits then SEP;
the right response is the same digits sorted ascending, exactly
``num_digits`` tokens. The reward of a response is the fraction of positions
holding the right digit, in [0, 1], so the right answer depends on the prompt
and "it learns" is a number.

Also here: the supervised warm-up (a few steps of next-token training on
right answers, as RLHF starts from an SFT model) that leaves the policy well
short of the maximum so that RL has to do the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SortTask", "get_task", "supervised_warmup"]


@dataclass(frozen=True, kw_only=True)
class SortTask:
    num_digits: int = 6
    num_values: int = 10  # digits are drawn from 0 .. num_values-1

    def __post_init__(self) -> None:
        if self.num_digits < 1:
            raise ValueError(f"SortTask.num_digits must be >= 1, got {self.num_digits}")
        if not 2 <= self.num_values <= 10:
            raise ValueError(f"SortTask.num_values must be in [2, 10], got {self.num_values}")

    # --- tokenizer -----------------------------------------------------------
    sep_token_id: ClassVar[int] = 10
    pad_token_id: ClassVar[int] = 11
    vocab_size: ClassVar[int] = 12

    @property
    def prompt_length(self) -> int:
        return self.num_digits + 1

    @property
    def response_length(self) -> int:
        return self.num_digits

    def encode(self, digits: list[int]) -> torch.Tensor:
        """Prompt token ids (num_digits + 1,) of a list of digits; wrong length or a
        non-digit is a ValueError."""
        if len(digits) != self.num_digits or any(not 0 <= d < self.num_values for d in digits):
            raise ValueError(
                f"a prompt is {self.num_digits} digits in [0, {self.num_values}), got {digits}"
            )
        return torch.tensor([*digits, self.sep_token_id], dtype=torch.long)

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        """Readable text of token ids: digits as themselves, SEP as '>', PAD as '.'."""
        names = {self.sep_token_id: ">", self.pad_token_id: "."}
        return "".join(names.get(int(i), str(int(i))) for i in ids)

    # --- data ---------------------------------------------------------------
    def make_prompts(self, n: int, *, seed: int) -> list[dict[str, torch.Tensor]]:
        """``n`` prompt dicts ``{"prompt_ids": (P,)}`` drawn with their own seed,
        so the same seed gives the same prompts without touching the global RNG."""
        gen = torch.Generator().manual_seed(seed)
        digits = torch.randint(0, self.num_values, (n, self.num_digits), generator=gen)
        sep = torch.full((n, 1), self.sep_token_id, dtype=torch.long)
        ids = torch.cat([digits, sep], dim=1)  # (n, P)
        return [{"prompt_ids": row.clone()} for row in ids]

    def targets(self, prompt_ids: torch.Tensor) -> torch.Tensor:
        """The right responses (B, num_digits) of prompts (B, P)."""
        return prompt_ids[:, : self.num_digits].sort(dim=1).values

    def reward(self, data: dict[str, Any]) -> torch.Tensor:
        """Fraction of response positions holding the right digit: (B,) in [0, 1].

        Reads ``prompt_ids`` (B, P) and ``response_ids`` (B, R); a response
        shorter than ``num_digits`` scores its missing positions as wrong.
        """
        prompt_ids, response = data["prompt_ids"], data["response_ids"]
        target = self.targets(prompt_ids)  # (B, D)
        n = min(response.shape[1], self.num_digits)
        right = (response[:, :n] == target[:, :n]).float().sum(dim=1)  # (B,)
        return right / self.num_digits


def get_task(spec: dict[str, Any] | None) -> SortTask:
    """The task named by a config dict such as ``{"name": "sort", "num_digits": 6}``.

    None (or no ``name``) means the sort task with its defaults; an unknown
    name or key is a ValueError naming it.
    """
    spec = dict(spec or {})
    name = spec.pop("name", "sort")
    if name != "sort":
        raise ValueError(f"unknown task {name!r}; known tasks: ['sort']")
    known = {"num_digits", "num_values"}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} for task 'sort'; known: {sorted(known)}")
    return SortTask(**spec)


def supervised_warmup(
    model: nn.Module,
    task: SortTask,
    *,
    steps: int,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
) -> list[float]:
    """Train ``model`` for ``steps`` steps of next-token loss on right answers.

    Deterministic: prompts come from a private generator seeded with ``seed``
    and the global RNG is left untouched, so every module that runs the same
    warm-up on the same initial weights ends with the same weights. Only the
    response tokens are scored (the prompt digits are random, nothing to
    learn). Returns the loss per step; ``steps`` 0 does nothing.
    """
    if steps < 0:
        raise ValueError(f"warm-up steps must be >= 0, got {steps}")
    losses: list[float] = []
    if steps == 0:
        return losses
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    P = task.prompt_length
    for _ in range(steps):
        digits = torch.randint(0, task.num_values, (batch_size, task.num_digits), generator=gen)
        sep = torch.full((batch_size, 1), task.sep_token_id, dtype=torch.long)
        prompt = torch.cat([digits, sep], dim=1)  # (B, P)
        ids = torch.cat([prompt, task.targets(prompt)], dim=1)  # (B, P + D)
        logits = model(ids[:, :-1])[:, P - 1 :]  # (B, D, V): predictions of the answer
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, P:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses
