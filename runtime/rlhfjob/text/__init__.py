"""Text prompts: rows from local files, a saved model's tokenizer, chat templates, padding.

The fields of a text sample, as the modules after the policy (and reward
functions, which get them as keyword arguments) see them:

- ``prompt``: the row's prompt as the file holds it (its ``runtime.prompt_key``
  column): a string, or a list of chat messages (``{"role", "content"}``
  mappings). It stays as it is: a batch holds a list of them.
- every other column of the row under its own name (``answer``, ...); values
  that are not numbers (strings, lists, mappings, nulls) batch as lists.
- ``prompt_source``: ``"<key> '<path>' row <i>"`` (0-based), only for rows from
  a file; errors about the row name it.
- added by the policy's ``build_dataset`` (``encode_prompts``):
  ``prompt_text``, the text the model reads (chat template applied, generation
  prompt opened, truncated as the ids are); ``prompt_ids`` (P,) and
  ``prompt_mask`` (P,), left-padded to the longest prompt of the dataset.

``rlhfjob.text.files`` reads files (``runtime.data_path``,
``runtime.eval_data_path``), ``rlhfjob.text.tokens`` tokenizes.
"""

from rlhfjob.text.files import FORMATS, RESERVED, check_prompt, read_prompt_file, rows_to_samples
from rlhfjob.text.tokens import (
    Truncation,
    encode_prompts,
    is_text_dataset,
    left_pad,
    load_tokenizer,
    pad_token_id,
    prompt_text,
    prompt_token_ids,
    truncate,
)

__all__ = [
    "FORMATS",
    "RESERVED",
    "Truncation",
    "check_prompt",
    "encode_prompts",
    "is_text_dataset",
    "left_pad",
    "load_tokenizer",
    "pad_token_id",
    "prompt_text",
    "prompt_token_ids",
    "read_prompt_file",
    "rows_to_samples",
    "truncate",
]
