"""`rlhfjob ledger`: a checkpoint's prompt ledger printed without torch, and bad paths named."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from rlhfjob_operator.ledger import LEDGER, format_ledger, prompt_counts

ENTRIES = [
    {"episode": 1, "prompts": ["0:2", "0:0"], "copies": 2, "generated_with": 0, "trained_with": 0},
    {"episode": 2, "prompts": ["0:1", "1:0"], "copies": 2, "generated_with": 0, "trained_with": 1},
    {"episode": 3, "prompts": ["0:2"], "copies": 2, "generated_with": 1, "trained_with": None},
]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rlhfjob_operator.cli", "ledger", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_counts_and_lines() -> None:
    generated, trained = prompt_counts(ENTRIES)
    assert generated == {"0:0": 2, "0:1": 2, "0:2": 4, "1:0": 2}
    assert trained == {"0:0": 2, "0:1": 2, "0:2": 2, "1:0": 2}
    text = format_ledger(Path("ck"), ENTRIES)
    assert (
        "episode 2: 2 prompt(s) x 2, generated with weights v0, trained with v1 (staleness 1)"
        in text
    )
    assert "episode 3: 1 prompt(s) x 2, generated with weights v1, not trained yet: 0:2" in text
    assert text.splitlines()[-4:] == ["0:0  2  2", "0:1  2  2", "0:2  4  2", "1:0  2  2"]


def test_the_newest_complete_checkpoint_is_printed(tmp_path: Path) -> None:
    for episode, complete in ((1, True), (2, True), (3, False)):
        where = tmp_path / f"episode_{episode:06d}"
        where.mkdir()
        (where / LEDGER).write_text(json.dumps(ENTRIES[:episode]))
        if complete:
            (where / "COMPLETE").write_text("{}")
    proc = _cli(str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"ledger of {tmp_path / 'episode_000002'}: 2 episode(s)")


def test_a_directory_without_checkpoints_is_named(tmp_path: Path) -> None:
    proc = _cli(str(tmp_path))
    assert proc.returncode == 2
    assert f"{str(tmp_path)!r} is no complete checkpoint and holds none" in proc.stderr
    assert "Traceback" not in proc.stderr
