"""What every benchmark shares: running rlhfjob jobs, timing, the machine, the table."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ENTRY = HERE / "runtime_entry.py"


def bench_line(output: str) -> Any:
    """The JSON of the line starting ``BENCH`` (or ``RESULT``) in ``output``."""
    for line in output.splitlines():
        for tag in ("BENCH ", "RESULT "):
            if line.startswith(tag):
                return json.loads(line[len(tag) :])
    raise RuntimeError(f"no BENCH line in the output:\n{output[-3000:]}")


def run_job(
    name: str, args: list[str], runtime: dict, models: dict, tmp: Path, *, timeout: float = 600
) -> Any:
    """``rlhfjob run`` a job of runtime_entry.py; returns its BENCH result."""
    manifest = {
        "apiVersion": "rlhf.dev/v1alpha1",
        "kind": "RLHFJob",
        "metadata": {"name": name},
        "spec": {
            "image": "rlhfjob:dev",
            "entrypoint": {"file": str(ENTRY), "args": args},
            "runtime": runtime,
            "models": models,
            "runPolicy": {"backoffLimit": 0},
        },
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(manifest))
    proc = subprocess.run(
        [sys.executable, "-m", "rlhfjob_operator.cli", "run", str(path)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode:
        raise RuntimeError(f"job {name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return bench_line(proc.stdout)


def run_script(argv: list[str], *, timeout: float = 600, env: dict | None = None) -> Any:
    """Run a python script of bench/ in its own process; returns its RESULT."""
    proc = subprocess.run(
        [sys.executable, *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if proc.returncode:
        raise RuntimeError(f"{argv[0]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return bench_line(proc.stdout)


def best_of(fn: Callable[[], Any], repeats: int) -> float:
    """The fastest of ``repeats`` timed runs of ``fn``, after one untimed warm-up."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def load_average() -> tuple[float, float, float]:
    one, five, fifteen = Path("/proc/loadavg").read_text().split()[:3]
    return float(one), float(five), float(fifteen)


def machine() -> str:
    """CPU model, cores, memory, kernel, Python and torch: what the figures are of."""
    import torch

    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return (
        f"{model}, {os.cpu_count()} cores, {mem_kb / 2**20:.0f} GiB, Linux "
        f"{platform.release()}, Python {platform.python_version()}, torch {torch.__version__}"
    )


@dataclasses.dataclass(frozen=True)
class Row:
    """One figure beside one baseline: ``ratio`` is how many times better rlhfjob is."""

    what: str
    figure: str
    baseline: str
    ratio: float | None
    target: str = ""
    met: bool | None = None


def table(title: str, rows: list[Row]) -> str:
    """A Markdown table of ``rows``."""
    lines = [
        f"### {title}",
        "",
        "| what | rlhfjob | baseline | ratio | target | |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = "" if r.ratio is None else f"{r.ratio:.2f}x"
        met = "" if r.met is None else ("met" if r.met else "**missed**")
        lines.append(f"| {r.what} | {r.figure} | {r.baseline} | {ratio} | {r.target} | {met} |")
    return "\n".join(lines)


def gbps(nbytes: float, seconds: float) -> float:
    return nbytes / seconds / 2**30
