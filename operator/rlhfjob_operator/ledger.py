"""The prompt ledger of a checkpoint (``ledger.json``), read and printed without torch.

The runtime writes one entry per episode whose env flow was submitted
(``rlhfjob.ahead``): ``episode``, ``prompts`` (prompt ids ``"<dataset>:<index>"``, in
the order they were taken from the stream), ``copies`` (responses per prompt:
``num_inference_per_prompt``), ``generated_with`` (the weight version the env flow
ran on: episodes trained before it) and ``trained_with`` (the version that trained on
its samples; null while it is still ahead of training). ``rlhfjob ledger DIR`` prints
it, with how often each prompt was generated from and trained on.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from rlhfjob_operator.restarts import CHECKPOINT_DIR, COMPLETE

__all__ = ["LEDGER", "format_ledger", "prompt_counts", "read_ledger"]

LEDGER = "ledger.json"


def _checkpoint(path: Path) -> Path:
    """``path`` itself when it is a complete checkpoint, else the newest complete one in it."""
    if (path / COMPLETE).is_file():
        return path
    found = [
        (int(m.group(1)), entry)
        for entry in (path.iterdir() if path.is_dir() else ())
        if (m := CHECKPOINT_DIR.match(entry.name)) and (entry / COMPLETE).is_file()
    ]
    if not found:
        raise ValueError(
            f"{str(path)!r} is no complete checkpoint and holds none (episode_NNNNNN "
            f"directories with a {COMPLETE} file); give runtime.data_checkpoint_path or one "
            "checkpoint in it"
        )
    return max(found)[1]


def read_ledger(path: str | Path) -> tuple[Path, list[dict[str, Any]]]:
    """(the checkpoint read, its ledger entries). ValueError names a missing checkpoint,
    one saved before ledgers were, or an unreadable file."""
    checkpoint = _checkpoint(Path(path))
    file = checkpoint / LEDGER
    if not file.is_file():
        raise ValueError(
            f"checkpoint {str(checkpoint)!r} has no {LEDGER}: it was saved by a version "
            "without the prompt ledger, or by a job without an env flow"
        )
    try:
        entries = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{str(file)!r} cannot be read: {exc}") from None
    return checkpoint, list(entries)


def prompt_counts(entries: list[dict[str, Any]]) -> tuple[Counter[str], Counter[str]]:
    """(responses generated, responses trained on) per prompt id."""
    generated: Counter[str] = Counter()
    trained: Counter[str] = Counter()
    for entry in entries:
        for prompt in entry["prompts"]:
            generated[prompt] += entry["copies"]
            if entry["trained_with"] is not None:
                trained[prompt] += entry["copies"]
    return generated, trained


def format_ledger(checkpoint: Path, entries: list[dict[str, Any]]) -> str:
    """One line per episode, then each prompt's counts: what ``rlhfjob ledger`` prints."""
    lines = [f"ledger of {checkpoint}: {len(entries)} episode(s)"]
    for entry in entries:
        trained = entry["trained_with"]
        staleness = "" if trained is None else f" (staleness {trained - entry['generated_with']})"
        lines.append(
            f"episode {entry['episode']}: {len(entry['prompts'])} prompt(s) x "
            f"{entry['copies']}, generated with weights v{entry['generated_with']}, "
            + ("not trained yet" if trained is None else f"trained with v{trained}{staleness}")
            + ": "
            + " ".join(entry["prompts"])
        )
    generated, trained_on = prompt_counts(entries)
    lines.append("prompt  generated  trained")
    for prompt in sorted(generated, key=lambda p: tuple(int(x) for x in p.split(":"))):
        lines.append(f"{prompt}  {generated[prompt]}  {trained_on[prompt]}")
    return "\n".join(lines)
