"""A tiny saved language model with a real tokenizer, both made here: nothing downloaded.

``save_text_model(path)`` trains a byte-level BPE with ``tokenizers`` on a few lines,
wraps it in transformers' ``PreTrainedTokenizerFast`` with a short chat template,
and saves it beside a tiny randomly initialised Llama (or GPT-2) built from a config,
as a user saves a checkpoint: ``model_path`` then names the directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

# Each message on its own line after its role; the generation prompt opens the
# assistant's turn, so a rendered prompt ends with "<|assistant|>\n".
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
EOS = "<|end|>"
PAD = "<|pad|>"
CORPUS = [
    "What is two plus three? The answer is 5.",
    "What is seven minus four? The answer is 3.",
    "Add the numbers 1 2 3 4 5 6 7 8 9 0 and say the sum.",
    "<|system|> <|user|> <|assistant|> You are a careful assistant.",
    "Sort these digits: 3 1 2. Answer: 1 2 3.",
]


def make_tokenizer(*, chat_template: str | None = CHAT_TEMPLATE) -> Any:
    """A byte-level BPE (every string encodes) with EOS and PAD as special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=[PAD, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(CORPUS, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS, pad_token=PAD)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def tiny_lm(kind: str, *, vocab: int, positions: int) -> Any:
    """A tiny random ``kind`` (``llama`` or ``gpt2``) causal LM built from a config after
    ``torch.manual_seed(0)``: 2 layers, 16 wide, ``positions`` long."""
    import transformers

    torch.manual_seed(0)
    if kind == "gpt2":
        return transformers.GPT2LMHeadModel(
            transformers.GPT2Config(
                vocab_size=vocab, n_positions=positions, n_embd=16, n_layer=2, n_head=2
            )
        )
    return transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=vocab,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=positions,
        )
    )


def save_text_model(
    path: Path, *, kind: str = "llama", chat_template: str | None = CHAT_TEMPLATE
) -> Path:
    """The tokenizer and a tiny ``kind`` (``llama`` or ``gpt2``) model saved in ``path``."""

    tokenizer = make_tokenizer(chat_template=chat_template)
    tiny_lm(kind, vocab=len(tokenizer), positions=128).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def save_reward_model(path: Path, *, padding_side: str = "right") -> Path:
    """A tiny ``LlamaForSequenceClassification`` (one label, ``pad_token_id`` set) and the
    tokenizer, padding on ``padding_side``, saved in ``path``: a reward model."""
    import transformers

    tokenizer = make_tokenizer()
    tokenizer.padding_side = padding_side
    torch.manual_seed(1)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
    )
    transformers.LlamaForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
