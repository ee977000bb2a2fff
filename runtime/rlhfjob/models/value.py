"""A value model: any backbone's hidden states through a scalar head."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

__all__ = ["ValueModel"]


class _Backbone(Protocol):
    hidden_size: int

    def hidden_states(
        self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor: ...


class ValueModel(nn.Module):
    """V(s_t) for every position of a sequence: (B, T) token ids -> (B, T) values.

    The backbone is a ``GPT`` or an ``HFCausalLM`` (its LM head goes unused).
    The head starts at zero so that the first advantages are the plain
    discounted rewards rather than noise from a random head.
    """

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        hidden = int(backbone.hidden_size)  # type: ignore[arg-type]
        self.value_head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(
        self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        hidden = self.backbone.hidden_states(idx, attention_mask)  # type: ignore[operator]
        # The head in float32 even under autocast: bf16 would round values to 3 digits.
        with torch.autocast(hidden.device.type, enabled=False):
            return self.value_head(hidden.float()).squeeze(-1)  # (B, T)
