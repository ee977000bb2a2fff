"""Text prompts as token ids: a saved model's tokenizer, its chat template, truncation, and
left padding.

``load_tokenizer`` is the I/O edge; the rest are pure given a tokenizer.
A string prompt is tokenized with the tokenizer's usual special tokens (a
Llama tokenizer adds its BOS); a list of chat messages is rendered by the
tokenizer's chat template with the generation prompt (the assistant's turn
opened), and the rendered text is tokenized without adding special tokens,
since the template writes its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from rlhfjob.text.files import check_prompt

__all__ = [
    "Truncation",
    "encode_prompts",
    "is_text_dataset",
    "left_pad",
    "load_tokenizer",
    "pad_token_id",
    "prompt_text",
    "prompt_token_ids",
    "truncate",
]

# What happens to a prompt longer than max_prompt_length: fail naming its row, or keep its
# last tokens (the end of a prompt, where the question and the generation prompt are).
Truncation = Literal["error", "left"]


def load_tokenizer(path: str | Path, *, key: str = "model_path") -> Any:
    """``AutoTokenizer`` from a local model directory (``model_path``), never downloaded.

    Raises ValueError naming ``key`` (the setting) and ``path`` when it is not a
    directory or holds no tokenizer ``transformers`` can load; ImportError says how to
    install transformers.
    """
    local = Path(path)
    if not local.is_dir():
        raise ValueError(
            f"{key} {str(path)!r} is not a local directory, so it has no tokenizer; save "
            "the model and its tokenizer there (save_pretrained) — nothing is downloaded"
        )
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError("tokenizers need transformers: pip install 'rlhfjob[hf]'") from exc
    try:
        return AutoTokenizer.from_pretrained(str(local), local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        raise ValueError(
            f"{key} {str(path)!r} holds no tokenizer transformers can load ({exc}); save "
            "one there with tokenizer.save_pretrained(path)"
        ) from exc


def pad_token_id(tokenizer: Any) -> int:
    """The id that fills a prompt's left padding: the tokenizer's pad token, else its EOS
    (GPT-2 and Llama have no pad token), else 0. The mask is 0 there, so any id works."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    return 0


def prompt_text(tokenizer: Any, prompt: str | list[dict[str, str]], *, where: str) -> str:
    """The text the model is given: a string prompt as it is, chat messages through the
    tokenizer's chat template with the generation prompt. ValueError naming ``where`` when
    the prompt is conversational and the tokenizer has no chat template."""
    if isinstance(prompt, str):
        return prompt
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"{where}: the prompt is a list of chat messages but the model's tokenizer has no "
            "chat template; set tokenizer.chat_template and save it with the model, or give "
            "string prompts"
        )
    text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    assert isinstance(text, str), "tokenize=False renders text"
    return text


def prompt_token_ids(tokenizer: Any, text: str, *, conversational: bool) -> list[int]:
    """The ids of ``text``; special tokens are added only to a string prompt (a chat
    template has written its own)."""
    return list(tokenizer(text, add_special_tokens=not conversational)["input_ids"])


def truncate(
    ids: list[int], *, max_length: int | None, truncation: Truncation, where: str
) -> list[int]:
    """``ids`` within ``max_length`` (None: any length). Longer: ValueError naming
    ``where`` and both lengths (``error``), or the last ``max_length`` ids (``left``)."""
    if max_length is None or len(ids) <= max_length:
        return ids
    if truncation == "error":
        raise ValueError(
            f"{where}: the prompt has {len(ids)} tokens, more than max_prompt_length "
            f"({max_length}); shorten it, raise max_prompt_length, or set "
            "prompt_truncation: left to keep its last tokens"
        )
    return ids[-max_length:]


def left_pad(seqs: Sequence[Sequence[int]], *, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids (B, P) and mask (B, P) of ``seqs`` padded on the left to the longest (P), so
    every prompt ends where generation starts. The mask is 1 on real tokens."""
    width = max((len(s) for s in seqs), default=0)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)  # (B, P)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)  # (B, P)
    for row, seq in enumerate(seqs):
        if seq:
            ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[row, width - len(seq) :] = 1
    return ids, mask


def is_text_dataset(prompts: Sequence[Any], *, owner: str) -> bool:
    """Whether ``prompts`` are text (dicts with a ``prompt``, no ``prompt_ids``), which
    ``encode_prompts`` tokenizes, rather than token ids, which are used as they are.

    ValueError names the first prompt that is no dict or has neither key (``owner``:
    the module taking them), and the first of a dataset mixing the two kinds: one
    padding would not fit both.
    """
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, dict) or not {"prompt_ids", "prompt"} & set(prompt):
            raise ValueError(
                f"prompt {i} is {type(prompt).__name__}; {owner} takes dicts with 'prompt_ids' "
                "(a 1-d LongTensor) and optionally 'prompt_mask', or with a text 'prompt' "
                "(a string or chat messages)"
            )
    text = ["prompt_ids" not in p for p in prompts]
    if text and not all(t == text[0] for t in text):
        raise ValueError(
            f"prompt {text.index(not text[0])} differs in kind from prompt 0: give all "
            "prompts as text ('prompt') or all as 'prompt_ids'"
        )
    return bool(text) and text[0]


def encode_prompts(
    tokenizer: Any,
    samples: Sequence[dict[str, Any]],
    *,
    max_length: int | None = None,
    truncation: Truncation = "error",
) -> list[dict[str, Any]]:
    """Each sample with ``prompt_text`` (str: what the model reads, truncated as its ids
    are), ``prompt_ids`` (P,) and ``prompt_mask`` (P,) added, left-padded to the longest
    prompt of ``samples``, so any of them batch.

    A sample's ``prompt`` is a string or chat messages (``check_prompt``). Errors name
    the sample's ``prompt_source`` (a file's row), else its index: a prompt of the wrong
    shape, one longer than ``max_length`` under ``error``, one with no tokens at all.
    """
    texts, token_ids = [], []
    for index, sample in enumerate(samples):
        where = sample.get("prompt_source") or f"prompt {index} of the dataset"
        prompt = sample["prompt"]
        check_prompt(prompt, where=where)
        text = prompt_text(tokenizer, prompt, where=where)
        ids = prompt_token_ids(tokenizer, text, conversational=not isinstance(prompt, str))
        if not ids:
            raise ValueError(f"{where}: the prompt has no tokens; give it some text")
        kept = truncate(ids, max_length=max_length, truncation=truncation, where=where)
        texts.append(text if kept is ids else tokenizer.decode(kept))
        token_ids.append(kept)
    padded, mask = left_pad(token_ids, pad_id=pad_token_id(tokenizer))  # (B, P) each
    # Each row its own tensor: a view would pickle and checkpoint the whole (B, P) storage.
    return [
        {**sample, "prompt_text": text, "prompt_ids": row.clone(), "prompt_mask": row_mask.clone()}
        for sample, text, row, row_mask in zip(samples, texts, padded, mask, strict=True)
    ]
