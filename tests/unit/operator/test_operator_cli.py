"""`python -m rlhfjob_operator` refuses credentials it cannot use: a message, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("content", [None, "garbage: [", "apiVersion: v1\nkind: Config\n"])
def test_unusable_kubeconfig_is_named(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "kubeconfig"
    if content is not None:
        path.write_text(content)
    proc = subprocess.run(
        [sys.executable, "-m", "rlhfjob_operator", "--kubeconfig", str(path), "-n", "x"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert f"no cluster credentials from {path}" in proc.stderr
    assert "pass --kubeconfig" in proc.stderr
    assert "Traceback" not in proc.stderr
