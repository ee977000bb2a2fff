"""Rollout engines: prompts in, sampled responses with masks and log-probs out.

``RolloutEngine`` is the one interface the algorithms need to generate. Two
local engines implement it with one sampling loop (``rlhfjob.models.sample_next``)
and differ only in how they get the next token's logits:

- ``CachedEngine`` keeps each layer's past keys and values (``decode_logits``
  of the small GPT and of the Hugging Face adapter), so a step computes one
  token per sequence: linear in the response length.
- ``RecomputeEngine`` runs the whole sequence again for every token: quadratic,
  for any model called as ``model(input_ids, attention_mask) -> logits``; it is
  the reference the cached engine is tested against.

A serving engine (vLLM or SGLang, on GPUs) takes their place by implementing
``generate`` over its own server: ``GenerationSettings`` maps onto its sampling
parameters (``n``, ``temperature``, ``top_p``, ``top_k``, stop token ids, ``stop``
strings) and its outputs onto ``Rollout``. None is built here: this machine has no GPU to
run and test one on.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any, Protocol

import torch

from rlhfjob.models.generation import CausalLM, sample_next, token_log_probs
from rlhfjob.rollout.settings import GenerationSettings, Rollout

__all__ = [
    "CachedEngine",
    "CachedLM",
    "RecomputeEngine",
    "RolloutEngine",
    "engine_for",
    "string_stops",
]

# step(new_ids (N, t), mask (N, T)) -> logits (N, V) of the token after the last one;
# ``mask`` covers every token so far, the new ones included.
Step = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# stops(response_ids (N, t)) -> (N,) bool: the response ends with its last token.
Stops = Callable[[torch.Tensor], torch.Tensor]


class RolloutEngine(Protocol):
    def generate(
        self,
        prompt_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        settings: GenerationSettings,
        *,
        generator: torch.Generator | None = None,
    ) -> Rollout:
        """``settings.n`` responses to each left-padded prompt (B, P) (mask 0 on padding;
        None: no padding). Sampling draws from ``generator``, else torch's global RNG."""
        ...


class CachedLM(Protocol):
    def decode_logits(
        self, idx: torch.Tensor, attention_mask: torch.Tensor, cache: Any = None
    ) -> tuple[torch.Tensor, Any]:
        """Logits (B, V) of the token after ``idx`` (B, t), the tokens after the cached
        ones (all of them when ``cache`` is None); ``attention_mask`` (B, past + t).
        Returns the cache that now holds ``idx`` too."""
        ...


def string_stops(tokenizer: Any, stop_strings: tuple[str, ...]) -> Stops:
    """``stops(response_ids (N, t)) -> (N,)``: True where the last token completes one
    of ``stop_strings`` in the decoded text, whichever tokens spell it (an ending may
    also overhang it: ``transformers``' ``StopStringCriteria``, which
    ``generate(stop_strings=...)`` uses). Only the response is read, so a stop string
    the prompt ends with does not end the response at once.

    ValueError when there are stop strings but no tokenizer to read them with.
    """
    if tokenizer is None:
        raise ValueError(
            f"stop_strings {list(stop_strings)} need the tokenizer: give the engine one "
            "(a policy with model_path loads the one saved there)"
        )
    from transformers import StopStringCriteria

    criteria = StopStringCriteria(tokenizer=tokenizer, stop_strings=list(stop_strings))

    def stops(response_ids: torch.Tensor) -> torch.Tensor:
        return criteria(response_ids, None)

    return stops


class _LocalEngine(abc.ABC):
    """The sampling loop of the in-process engines. ``tokenizer`` is needed only for
    ``settings.stop_strings``."""

    def __init__(self, tokenizer: Any = None) -> None:
        self.tokenizer = tokenizer
        self._stops: dict[tuple[str, ...], Stops] = {}

    def _string_stops(self, stop_strings: tuple[str, ...]) -> Stops | None:
        if not stop_strings:
            return None
        if stop_strings not in self._stops:  # built once: it reads the whole vocabulary
            self._stops[stop_strings] = string_stops(self.tokenizer, stop_strings)
        return self._stops[stop_strings]

    @abc.abstractmethod
    def _start(self) -> Step:
        """A fresh step function (with its own cache, if any) for one batch."""

    @torch.no_grad()
    def generate(
        self,
        prompt_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        settings: GenerationSettings,
        *,
        generator: torch.Generator | None = None,
    ) -> Rollout:
        """See ``RolloutEngine.generate``. Stops early once every response has ended
        (the rest is padding), so the RNG draws only for steps that ran."""
        if prompt_ids.dim() != 2:
            raise ValueError(f"prompt_ids must be (batch, length), got {tuple(prompt_ids.shape)}")
        if attention_mask is None:
            attention_mask = torch.ones_like(prompt_ids)
        if attention_mask.shape != prompt_ids.shape:
            raise ValueError(
                f"attention_mask {tuple(attention_mask.shape)} must match prompt_ids "
                f"{tuple(prompt_ids.shape)}"
            )
        prompt = prompt_ids.repeat_interleave(settings.n, dim=0)  # (N, P)
        prompt_mask = attention_mask.repeat_interleave(settings.n, dim=0)  # (N, P)
        N, R, dev = prompt.shape[0], settings.max_new_tokens, prompt.device
        tokens = torch.full((N, R), settings.pad_token_id, dtype=prompt.dtype, device=dev)  # (N, R)
        alive = torch.zeros(N, R, dtype=prompt_mask.dtype, device=dev)  # (N, R)
        logprobs = torch.zeros(N, R, device=dev)  # (N, R)
        eos = torch.tensor(settings.eos_token_ids, dtype=prompt.dtype, device=dev)  # (E,)
        stops = [torch.tensor(s, dtype=prompt.dtype, device=dev) for s in settings.stop_sequences]
        string_stops = self._string_stops(settings.stop_strings)
        step = self._start()
        logits = step(prompt, prompt_mask)  # (N, V)
        mask = prompt_mask
        done = torch.zeros(N, dtype=torch.bool, device=dev)  # (N,)
        for t in range(R):
            token = sample_next(
                logits,
                temperature=settings.temperature,
                top_k=settings.top_k,
                top_p=settings.top_p,
                generator=generator,
            )  # (N,)
            live = ~done  # (N,)
            token = torch.where(live, token, settings.pad_token_id)  # (N,)
            tokens[:, t] = token
            alive[:, t] = live
            logprobs[:, t] = token_log_probs(logits[:, None], token[:, None])[:, 0] * live
            if len(eos):
                done = done | torch.isin(token, eos)
            for stop in stops:
                if len(stop) <= t + 1:
                    done = done | (tokens[:, t + 1 - len(stop) : t + 1] == stop).all(dim=1)
            if string_stops is not None:
                done = done | (live & string_stops(tokens[:, : t + 1]))
            if t == R - 1 or bool(done.all()):
                break
            mask = torch.cat([mask, live[:, None].to(mask.dtype)], dim=1)  # (N, P+t+1)
            logits = step(token[:, None], mask)  # (N, V)
        return Rollout(prompt, prompt_mask, tokens, alive, logprobs)


class CachedEngine(_LocalEngine):
    """Decodes with the model's KV cache: after the prompt, one token per step."""

    def __init__(self, model: CachedLM, tokenizer: Any = None) -> None:
        super().__init__(tokenizer)
        self.model = model

    def _start(self) -> Step:
        cache: Any = None

        def step(new_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            nonlocal cache
            logits, cache = self.model.decode_logits(new_ids, mask, cache)
            return logits

        return step


class RecomputeEngine(_LocalEngine):
    """Runs the whole sequence for every new token (no cache): any ``CausalLM``."""

    def __init__(self, model: CausalLM, tokenizer: Any = None) -> None:
        super().__init__(tokenizer)
        self.model = model

    def _start(self) -> Step:
        ids: torch.Tensor | None = None

        def step(new_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            nonlocal ids
            ids = new_ids if ids is None else torch.cat([ids, new_ids], dim=1)  # (N, T)
            return self.model(ids, mask)[:, -1]  # (N, V)

        return step


def engine_for(model: Any, tokenizer: Any = None) -> RolloutEngine:
    """The cached engine when ``model`` has ``decode_logits`` (the small GPT, the
    Hugging Face adapter), else the recompute one; ``tokenizer`` reads
    ``stop_strings``."""
    if callable(getattr(model, "decode_logits", None)):
        return CachedEngine(model, tokenizer)
    return RecomputeEngine(model, tokenizer)
