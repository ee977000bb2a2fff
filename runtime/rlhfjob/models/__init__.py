"""Models the ready-made algorithms run on: the small GPT and any local HF causal LM.

Both are called as ``model(input_ids, attention_mask) -> logits (B, T, V)``
and expose ``hidden_states(...) -> (B, T, C)`` for a value head, and
``decode_logits(...)`` to decode with a KV cache (``rlhfjob.rollout``).
"""

from rlhfjob.models.generation import (
    response_log_probs,
    sample_next,
    token_log_probs,
)
from rlhfjob.models.gpt import GPT, GPTConfig, KVCache
from rlhfjob.models.hf import DTYPES, HFCausalLM, load_hf_causal_lm
from rlhfjob.models.value import ValueModel

__all__ = [
    "DTYPES",
    "GPT",
    "GPTConfig",
    "HFCausalLM",
    "KVCache",
    "ValueModel",
    "load_hf_causal_lm",
    "response_log_probs",
    "sample_next",
    "token_log_probs",
]
