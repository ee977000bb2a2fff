"""A small GPT, in the style of nanoGPT: the model PPO and GRPO run on by default.

Pre-norm transformer blocks, learned position embeddings, weight tying between
the token embedding and the output head. Nothing is downloaded: the model is
built from a ``GPTConfig`` and trained from scratch (or loaded from a saved
state dict).

Beyond nanoGPT, ``forward`` takes an optional ``attention_mask`` (B, T) so
that left-padded prompts of different lengths share a batch: padding is never
attended to and positions count real tokens only; and an optional ``KVCache``
so that decoding one more token computes that token alone (the keys and
values of the tokens before it are kept per layer).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from rlhfjob.models.generation import token_log_probs

__all__ = ["GPT", "GPTConfig", "KVCache"]


@dataclass(kw_only=True)
class GPTConfig:
    vocab_size: int
    block_size: int = 64  # longest prompt + response
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    dropout: float = 0.0
    bias: bool = True

    def __post_init__(self) -> None:
        for key in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, key) < 1:
                raise ValueError(f"GPTConfig.{key} must be >= 1, got {getattr(self, key)}")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"GPTConfig.n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout}")

    @classmethod
    def from_dict(cls, args: dict[str, Any]) -> GPTConfig:
        """Build from a config dict; an unknown key is a ValueError naming it."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(args) - known)
        if unknown:
            raise ValueError(f"unknown GPTConfig key(s) {unknown}; known: {sorted(known)}")
        return cls(**args)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class LayerCache:
    """One layer's past keys and values, (B, nh, T, hs) each, filled left to right.

    The buffers are allocated on the first ``append``, ``capacity`` tokens long,
    so a step writes its keys in place instead of copying the past.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.length = 0
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store new keys and values (B, nh, t, hs); return all of them (B, nh, T + t, hs)."""
        B, nh, t, hs = k.shape
        end = self.length + t
        if end > self.capacity:
            raise ValueError(f"KV cache holds {self.capacity} tokens; {end} do not fit")
        if self.k is None or self.v is None:
            self.k = k.new_empty(B, nh, self.capacity, hs)
            self.v = v.new_empty(B, nh, self.capacity, hs)
        self.k[:, :, self.length : end] = k
        self.v[:, :, self.length : end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]  # (B, nh, T + t, hs) each


class KVCache:
    """Past keys and values of every layer, for one batch of sequences.

    Made by ``GPT.new_cache()`` and filled by forward calls: the first with the
    prompts, each later one with the next token(s) only. It grows to
    ``block_size`` tokens and cannot be rewound or shared between batches.
    """

    def __init__(self, config: GPTConfig) -> None:
        self.layers = [LayerCache(config.block_size) for _ in range(config.n_layer)]

    @property
    def length(self) -> int:
        """Tokens cached so far (padding included)."""
        return self.layers[0].length


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None, cache: LayerCache | None
    ) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if cache is not None:
            k, v = cache.append(k, v)  # (B, nh, past + T, hs) each
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=attn_mask is None,
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))  # (B, T, C)


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None, cache: LayerCache | None
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), attn_mask, cache)  # (B, T, C)
        return x + self.mlp(self.ln_2(x))  # (B, T, C)


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        # Plain attributes rather than nanoGPT's ModuleDict, so each one is typed.
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Recompute each block in the backward pass instead of keeping its activations.
        self.gradient_checkpointing = False
        # Weight tying: one matrix embeds tokens and scores them.
        self.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        # GPT-2's scaled init of residual projections keeps the residual stream's
        # variance from growing with depth.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @property
    def hidden_size(self) -> int:
        return self.config.n_embd

    def new_cache(self) -> KVCache:
        """An empty KV cache for one batch, up to ``block_size`` tokens long."""
        return KVCache(self.config)

    def hidden_states(
        self,
        idx: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Final-layer hidden states (B, T, C) of token ids (B, T).

        With ``attention_mask`` (1 = token, 0 = padding), positions count only
        real tokens and no query attends to padding; a padding query attends to
        itself alone so its row is finite (its output is meaningless and must
        be masked by the caller).

        With ``cache``, ``idx`` are the tokens after the cached ones and
        ``attention_mask`` (optional: all ones) covers the cached tokens and
        these, (B, past + T); the new tokens' keys and values join the cache.
        """
        B, T = idx.shape
        past = 0 if cache is None else cache.length
        S = past + T  # tokens attended to: the cached ones and these
        if self.config.block_size < S:
            raise ValueError(
                f"sequence of {S} tokens is longer than GPTConfig.block_size "
                f"({self.config.block_size}); raise block_size"
            )
        attn_mask = None
        if attention_mask is None and cache is None:
            pos = torch.arange(T, device=idx.device).expand(B, T)  # (B, T)
        else:
            if attention_mask is None:
                attention_mask = torch.ones(B, S, dtype=torch.long, device=idx.device)
            if attention_mask.shape != (B, S):
                raise ValueError(
                    f"attention_mask is {tuple(attention_mask.shape)}; it must cover the "
                    f"{past} cached and {T} new tokens: ({B}, {S})"
                )
            keep = attention_mask.bool()  # (B, S)
            pos = (keep.long().cumsum(-1) - 1).clamp(min=0)[:, past:]  # (B, T)
            # Query i sits at key position past + i: it sees keys up to there.
            causal = torch.ones(T, S, dtype=torch.bool, device=idx.device).tril(past)  # (T, S)
            eye = causal.triu(past)  # (T, S): each query's own key
            attn_mask = ((causal & keep[:, None, :]) | eye)[:, None]  # (B, 1, T, S)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C)
        # Checkpointing only where a backward pass will replay it (never with a cache,
        # which a replay would append to twice); the RNG is replayed too, so dropout
        # masks match.
        replay = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for i, block in enumerate(self.h):
            if replay and cache is None:
                x = checkpoint(block, x, attn_mask, None, use_reentrant=False)  # (B, T, C)
            else:
                x = block(x, attn_mask, None if cache is None else cache.layers[i])  # (B, T, C)
        return self.ln_f(x)  # (B, T, C)

    def forward(
        self,
        idx: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Logits (B, T, V) of token ids (B, T): position t scores token t+1.

        ``cache`` as in ``hidden_states``: then the logits are of the new tokens.
        """
        return self.lm_head(self.hidden_states(idx, attention_mask, cache))  # (B, T, V)

    def decode_logits(
        self, idx: torch.Tensor, attention_mask: torch.Tensor, cache: KVCache | None = None
    ) -> tuple[torch.Tensor, KVCache]:
        """Logits (B, V) of the token after ``idx`` (B, t), with a KV cache.

        ``idx`` are the tokens after the cached ones (the prompts, when ``cache``
        is None: a new cache is made) and ``attention_mask`` (B, past + t)
        covers both. Returns the cache, now holding ``idx`` too.
        """
        if cache is None:
            cache = self.new_cache()
        x = self.hidden_states(idx, attention_mask, cache)[:, -1]  # (B, C)
        return self.lm_head(x), cache  # (B, V)

    def log_probs(
        self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """log p(idx[:, t+1] | idx[:, :t+1]) for every t: (B, T) -> (B, T-1)."""
        logits = self(idx, attention_mask)[:, :-1]  # (B, T-1, V)
        return token_log_probs(logits, idx[:, 1:])  # (B, T-1)
