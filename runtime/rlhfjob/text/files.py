"""Prompt files: JSONL, JSON or parquet rows read with Hugging Face ``datasets``, as samples.

``read_prompt_file(path, key=..., prompt_key=...)`` is the I/O edge;
``rows_to_samples`` and ``check_prompt`` are pure. Only local files are read:
``datasets`` runs offline (``HF_DATASETS_OFFLINE=1`` unless the environment
says otherwise) and its cache lives in a temporary directory that is gone when
the rows are returned, so nothing is downloaded and nothing is left behind.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["FORMATS", "RESERVED", "check_prompt", "read_prompt_file", "rows_to_samples"]

# File suffix -> the ``datasets`` builder that reads it.
FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}

# Sample fields this package writes; a data file may not bring its own.
RESERVED = ("prompt_source", "prompt_text", "prompt_ids", "prompt_mask")


def check_prompt(prompt: Any, *, where: str) -> None:
    """Raise ValueError naming ``where`` unless ``prompt`` is a string or a non-empty list of
    chat messages (mappings with a string ``role`` and a string ``content``)."""
    if isinstance(prompt, str):
        return
    if not isinstance(prompt, list) or not prompt:
        raise ValueError(
            f"{where}: the prompt is {type(prompt).__name__} {prompt!r:.60}; give a string or "
            "a list of chat messages ({role, content} mappings)"
        )
    for i, message in enumerate(prompt):
        if not (
            isinstance(message, Mapping)
            and isinstance(message.get("role"), str)
            and isinstance(message.get("content"), str)
        ):
            raise ValueError(
                f"{where}: chat message {i} is {message!r:.60}; a message is a mapping with "
                "a string 'role' and a string 'content'"
            )


def rows_to_samples(
    rows: Iterable[Mapping[str, Any]], *, source: str, prompt_key: str = "prompt"
) -> list[dict[str, Any]]:
    """One sample per row: ``prompt`` (the row's ``prompt_key`` column), the row's other
    columns under their own names, and ``prompt_source`` (``"<source> row <i>"``, 0-based),
    which later errors name.

    Raises ValueError naming the row when it has no prompt (the column is absent or null)
    or a prompt of the wrong shape (``check_prompt``), when ``prompt_key`` is not
    ``prompt`` but the row also has a ``prompt`` column, or when the row has a column this
    package writes (``RESERVED``). No rows at all is an error too.
    """
    samples = []
    for i, row in enumerate(rows):
        where = f"{source} row {i}"
        prompt = row.get(prompt_key)
        if prompt is None:
            raise ValueError(
                f"{where} has no {prompt_key!r} (absent or null; its columns: {sorted(row)}); "
                "give every row one, or name the prompt's column with runtime.prompt_key"
            )
        check_prompt(prompt, where=where)
        rest = {k: v for k, v in row.items() if k != prompt_key}
        clash = sorted({"prompt", *RESERVED} & set(rest))
        if clash:
            raise ValueError(
                f"{where} has column(s) {clash}, which rlhfjob sets itself; rename them"
            )
        samples.append({"prompt": prompt, **rest, "prompt_source": where})
    if not samples:
        raise ValueError(f"{source} has no rows; give at least one prompt")
    return samples


def read_prompt_file(path: str | Path, *, key: str, prompt_key: str = "prompt") -> list[Any]:
    """The samples of a local JSONL, JSON or parquet file (``rows_to_samples``).

    ``key`` is the setting that named the file (``runtime.data_path``); every error
    names it and the path: a file that does not exist, a suffix other than ``FORMATS``',
    a file ``datasets`` cannot parse, no ``prompt_key`` column (the error lists the
    columns there are). A ``.json`` file holds an array of objects (or
    one object per line); ImportError says how to install ``datasets`` when missing.
    """
    local = Path(path)
    source = f"{key} {str(path)!r}"
    if not local.is_file():
        raise ValueError(f"{source} is not a file; give the path of a local prompt file")
    builder = FORMATS.get(local.suffix.lower())
    if builder is None:
        raise ValueError(
            f"{source}: the file's suffix {local.suffix!r} is none of {sorted(FORMATS)}"
        )
    # Before the import: datasets reads it once, then. Jobs never download.
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError("prompt files need datasets: pip install 'rlhfjob[hf]'") from exc
    with tempfile.TemporaryDirectory(prefix="rlhfjob-datasets-") as cache:
        try:
            table = datasets.load_dataset(
                builder,
                data_files=str(local),
                split="train",
                cache_dir=cache,
                keep_in_memory=True,
            )
        except Exception as exc:  # datasets wraps parse errors in several types of its own
            raise ValueError(f"{source} could not be read as {builder}: {exc}") from exc
        if prompt_key not in table.column_names:
            raise ValueError(
                f"{source} has no column {prompt_key!r}; its columns: {table.column_names}. "
                "Name the prompt's column with runtime.prompt_key"
            )
        rows = table.to_list()
    return rows_to_samples(rows, source=source, prompt_key=prompt_key)
