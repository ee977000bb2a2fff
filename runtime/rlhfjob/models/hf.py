"""Any Hugging Face causal LM from a local path, behind the small GPT's interface.

``HFCausalLM(model)(input_ids, attention_mask) -> logits (B, T, V)`` and
``hidden_states(...) -> (B, T, C)``, exactly as ``rlhfjob.models.GPT``, so the
PPO and GRPO modules drive either one. Only local paths are loaded: a job must
not depend on the hub being reachable from its pods.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["DTYPES", "HFCausalLM", "load_hf_causal_lm"]

# The dtypes a model may be loaded in (models.<name>.args.dtype), by name.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_hf_causal_lm(path: str | Path, *, dtype: str = "float32") -> HFCausalLM:
    """Load ``AutoModelForCausalLM`` from a local directory, wrapped in the adapter.

    Raises ValueError naming ``path`` when it is not an existing directory (a
    hub id such as ``gpt2`` is refused too: nothing is downloaded) or has no
    ``config.json``, or
    ``dtype`` naming the allowed ones. ImportError says how to install
    transformers when it is missing.
    """
    local = Path(path)
    if not local.is_dir():
        raise ValueError(
            f"model_path {str(path)!r} is not a local directory; save the model there first "
            "(model.save_pretrained(path)) — models are never downloaded"
        )
    if not (local / "config.json").is_file():
        raise ValueError(
            f"model_path {str(path)!r} has no config.json, so it is not a saved Hugging Face "
            "model; save one there with model.save_pretrained(path)"
        )
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {sorted(DTYPES)}")
    try:
        from transformers import AutoModelForCausalLM
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(
            "Hugging Face models need transformers: pip install 'rlhfjob[hf]'"
        ) from exc
    model = AutoModelForCausalLM.from_pretrained(
        str(local), dtype=DTYPES[dtype], local_files_only=True
    )
    return HFCausalLM(model)


class HFCausalLM(nn.Module):
    """Adapter: a ``transformers`` causal LM called like the small GPT.

    Dropout is switched off for good (``eval()`` on construction and on every
    ``train()``): PPO's probability ratio must be 1 when the weights have not
    moved, as in OpenRLHF and TRL. Left padding is handled by passing position
    ids that count real tokens only.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.model.eval()
        self.hf_config: Any = model.config
        # Keyword names differ across transformers releases: the cache was
        # ``past_key_values`` before 5.x named it ``cache``.
        accepts = inspect.signature(model.forward).parameters
        self._cache_key = "cache" if "cache" in accepts else "past_key_values"
        self._keep_last = {"logits_to_keep": 1} if "logits_to_keep" in accepts else {}
        self._checkpointed: list[nn.Module] = []  # enable_gradient_checkpointing's layers

    def train(self, mode: bool = True) -> HFCausalLM:
        super().train(mode)
        self.model.eval()
        if mode:
            # transformers checkpoints a layer only in training mode: those layers alone
            # train, their children (attention and MLP, with the dropouts) stay in eval.
            for layer in self._checkpointed:
                layer.training = True
        return self

    def enable_gradient_checkpointing(self) -> None:
        """Recompute each decoder layer in the backward pass (``use_reentrant=False``).

        Raises ValueError when the model's class does not support it.
        """
        if not getattr(self.model, "supports_gradient_checkpointing", False):
            raise ValueError(f"{type(self.model).__name__} does not support gradient checkpointing")
        model: Any = self.model
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # the 5.x name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        flagged = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False)]
        try:  # the layers decide (transformers >= 4.52); before, the decoder stack did
            from transformers.modeling_layers import GradientCheckpointingLayer
        except ImportError:  # pragma: no cover - depends on the install
            self._checkpointed = flagged
        else:
            self._checkpointed = [m for m in flagged if isinstance(m, GradientCheckpointingLayer)]
        self.train(self.training)

    @property
    def hidden_size(self) -> int:
        return int(self.hf_config.hidden_size)

    @property
    def vocab_size(self) -> int:
        return int(self.hf_config.vocab_size)

    def _run(self, idx: torch.Tensor, attention_mask: torch.Tensor | None, **kw: Any) -> Any:
        if attention_mask is None:
            attention_mask = torch.ones_like(idx)
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, T)
        return self.model(
            input_ids=idx,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
            **kw,
        )

    def forward(
        self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits (B, T, V) of token ids (B, T)."""
        return self._run(idx, attention_mask).logits  # (B, T, V)

    def hidden_states(
        self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Last layer's hidden states (B, T, C), after the final norm."""
        return self._run(idx, attention_mask, output_hidden_states=True).hidden_states[-1]

    def decode_logits(
        self, idx: torch.Tensor, attention_mask: torch.Tensor, cache: Any = None
    ) -> tuple[torch.Tensor, Any]:
        """Logits (B, V) of the token after ``idx`` (B, t), with the model's own cache.

        ``idx`` are the tokens after the cached ones (the prompts, when ``cache``
        is None: the model makes its cache) and ``attention_mask`` (B, past + t)
        covers both; position ids count real tokens, so left padding and padding
        after a finished response shift nothing. Returns the model's cache
        (a ``transformers`` ``Cache``), now holding ``idx`` too. Only the last position's
        logits are computed where the model allows it (``logits_to_keep``).
        """
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, past + t)
        out = self.model(
            input_ids=idx,
            attention_mask=attention_mask,
            position_ids=position_ids[:, -idx.shape[1] :],  # (B, t)
            use_cache=True,
            **{self._cache_key: cache},
            **self._keep_last,
        )
        return out.logits[:, -1], getattr(out, self._cache_key)  # (B, V)
