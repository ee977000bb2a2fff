"""A reward model from a local directory: ``AutoModelForSequenceClassification`` with one
label, scoring prompt + completion text.

The text is the prompt followed by the completion: a string prompt and the completion
joined as they are (tokenized with the tokenizer's special tokens, as prompts are), chat
messages through the reward tokenizer's chat template with the assistant's completion
as the last message (tokenized without special tokens, since the template writes its
own). The batch is padded on the tokenizer's ``padding_side``; positions count from each
row's first real token and the score is the model's logit at the last non-pad token
(transformers pools there by ``pad_token_id``), so left and right padding score alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rlhfjob.text import load_tokenizer, pad_token_id, prompt_token_ids

__all__ = ["RewardModel"]


class RewardModel:
    """Scores (B,) of prompt + completion texts under the model saved at ``path``.

    ValueError names the setting (``key``) and ``path`` when it is not a local directory,
    holds no sequence classifier with one label (another label count, or a causal LM
    whose score head would start random) or no tokenizer; and names the model when a
    prompt is chat messages but the reward tokenizer has no chat template.
    """

    def __init__(self, path: str, *, key: str = "reward_model_path") -> None:
        try:
            from transformers import AutoModelForSequenceClassification
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ImportError("reward models need transformers: pip install 'rlhfjob[hf]'") from exc
        if not Path(path).is_dir():
            raise ValueError(f"{key} {path!r} is not a local directory (nothing is downloaded)")
        self.name = Path(path).name
        try:
            model, info = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=1, local_files_only=True, output_loading_info=True
            )
        except (OSError, ValueError, RuntimeError) as exc:  # RuntimeError: another label count
            raise ValueError(
                f"{key} {path!r} holds no sequence-classification model with one label: {exc}"
            ) from exc
        if info["missing_keys"]:  # a causal LM's directory: the score head would be random
            raise ValueError(
                f"{key} {path!r} is no trained reward model: its checkpoint lacks "
                f"{', '.join(sorted(info['missing_keys']))} (a causal LM's directory?); save an "
                "AutoModelForSequenceClassification with num_labels=1 there"
            )
        self.tokenizer = load_tokenizer(path, key=key)
        if model.config.pad_token_id is None:  # a batch of several needs one to pool
            model.config.pad_token_id = pad_token_id(self.tokenizer)
        self.pad_id = int(model.config.pad_token_id)
        self.model = model.eval().requires_grad_(False)

    def token_ids(self, prompt: Any, completion: Any) -> list[int]:
        """The ids the model reads for one sample (the module docstring's text)."""
        if isinstance(prompt, str):
            text = prompt + (completion if isinstance(completion, str) else _content(completion))
            return prompt_token_ids(self.tokenizer, text, conversational=False)
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(
                f"{self.name}: the prompt is chat messages but the reward model's tokenizer "
                "has no chat template; save one with it, or give string prompts"
            )
        messages = [*prompt, {"role": "assistant", "content": _content(completion)}]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False)
        return prompt_token_ids(self.tokenizer, text, conversational=True)

    def pad(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Ids and mask (B, T), padded with the model's pad id on the tokenizer's side."""
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)  # (B, T)
        mask = torch.zeros_like(ids)  # (B, T)
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        for row, seq in enumerate(seqs):
            cols = slice(width - len(seq), width) if left else slice(0, len(seq))
            ids[row, cols] = torch.tensor(seq, dtype=torch.long)
            mask[row, cols] = 1
        return ids, mask

    @torch.no_grad()
    def __call__(self, prompts: list[Any], completions: list[Any]) -> torch.Tensor:
        seqs = [self.token_ids(p, c) for p, c in zip(prompts, completions, strict=True)]
        ids, mask = self.pad(seqs)  # (B, T) each
        positions = (mask.cumsum(1) - 1).clamp(min=0)  # (B, T): 0 at each first real token
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions)
        return out.logits[:, 0].float()  # (B,)


def _content(completion: Any) -> str:
    """A completion's text: itself, or its last chat message's content."""
    return completion if isinstance(completion, str) else str(completion[-1]["content"])
