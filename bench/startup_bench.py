"""Time to the first episode of the GRPO example: in-process against ``rlhfjob run``.

    python bench/startup_bench.py [REPEATS]

Runs ``examples/grpo_sort.py`` for one episode with plain python, then the
same manifest under ``rlhfjob run`` (a driver and four model workers), each
REPEATS times (default 1), alternating. Both run with ``RLHFJOB_TIMING=1``:
every process prints its start-up phases (``rlhfjob.timing``) and the figure
is the time from this script starting the command to the driver's
``episode 1 begins`` line, so python's and torch's imports are counted, as a
user waits for them. Prints one ``RESULT`` JSON line: the best of each, and
for the distributed run the best time of every phase, taken at the last
process to reach it (the one the gang waits for).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE.parent / "examples" / "grpo_sort.py"
_LINE = re.compile(r"rlhfjob timing: (\S+) (.+) at (\d+\.\d+)$")
FIRST = "episode 1 begins"


def phases(output: str) -> dict[str, dict[str, float]]:
    """``{phase: {process: unix seconds}}`` from every timing line in ``output``; a line
    prefixed by ``rlhfjob run`` (``[<process>] ...``) counts the same."""
    found: dict[str, dict[str, float]] = {}
    for line in output.splitlines():
        match = _LINE.search(line)
        if match:
            who, phase, at = match.groups()
            found.setdefault(phase, {})[who] = float(at)
    return found


def timed(argv: list[str], *, timeout: float) -> dict[str, float]:
    """Run ``argv``; returns each phase's seconds since the start, at its last process.
    A failed run raises with its output's tail."""
    start = time.time()
    proc = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "RLHFJOB_TIMING": "1"},
    )
    output = proc.stdout + proc.stderr
    found = phases(output)
    if proc.returncode or FIRST not in found:
        raise RuntimeError(f"{argv} failed ({proc.returncode}):\n{output[-3000:]}")
    return {phase: max(at.values()) - start for phase, at in found.items()}


def manifest(tmp: Path) -> Path:
    """The example's manifest for one episode, its entrypoint an absolute path."""
    job = yaml.safe_load(EXAMPLE.with_suffix(".yaml").read_text())
    job["spec"]["runtime"]["num_episode"] = 1
    job["spec"]["entrypoint"]["file"] = str(EXAMPLE)
    job["spec"]["runPolicy"] = {"backoffLimit": 0}
    path = tmp / "grpo-startup.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def main(argv: list[str]) -> int:
    repeats = int(argv[0]) if argv else 1
    with tempfile.TemporaryDirectory(prefix="rlhfjob-startup-") as tmp_dir:
        path = manifest(Path(tmp_dir))
        local: list[dict[str, float]] = []
        dist: list[dict[str, float]] = []
        for _ in range(repeats):
            argv_local = [sys.executable, str(EXAMPLE), "--config", str(path), "--quiet"]
            local.append(timed(argv_local, timeout=600))
            dist.append(
                timed([sys.executable, "-m", "rlhfjob_operator.cli", "run", str(path)], timeout=600)
            )
    best = {phase: min(run[phase] for run in dist if phase in run) for phase in dist[0]}
    result = {
        "in_process_s": min(run[FIRST] for run in local),
        "distributed_s": best[FIRST],
        "phases_s": dict(sorted(best.items(), key=lambda kv: kv[1])),
        "processes": 5,
    }
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
