"""Runtime figures, all on this machine in one run: ``python bench/runtime_bench.py``.

- PPO example episode time, in-process vs distributed (`rlhfjob run`, one worker per model);
- worker-to-worker transfer of 1/16/64 MB tensors (same host: TensorPipe shm + CMA);
- parameter sync rate of a 64 MB and 256 MB model (bucketed gloo broadcast) and of the
  PPO example's own models.
Prints a table; asserts nothing.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _summaries(output: str) -> list[dict]:
    line = next(x for x in output.splitlines() if x.startswith("BENCH "))
    return json.loads(line[len("BENCH ") :])


def distributed(name: str, args: list[str], runtime: dict, models: dict, tmp: Path) -> list[dict]:
    manifest = {
        "apiVersion": "rlhf.dev/v1alpha1",
        "kind": "RLHFJob",
        "metadata": {"name": name},
        "spec": {
            "image": "rlhfjob:dev",
            "entrypoint": {"file": str(HERE / "runtime_entry.py"), "args": args},
            "runtime": runtime,
            "models": models,
            "runPolicy": {"backoffLimit": 0},
        },
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(manifest))
    proc = subprocess.run(
        [sys.executable, "-m", "rlhfjob.cli", "run", str(path)],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if proc.returncode:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    return _summaries(proc.stdout)


def steady(summaries: list[dict], key: str) -> float:
    """Median over episodes after the first (which pays for warm-up and connections)."""
    values = [s[key] for s in summaries[1:] if key in s] or [s[key] for s in summaries]
    return statistics.median(values)


def main() -> None:
    episodes = int(os.environ.get("BENCH_PPO_EPISODES", "6"))
    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        config = yaml.safe_load((ROOT / "examples" / "ppo_sort.yaml").read_text())
        if "kind" in config:
            config = config["spec"]
        runtime = {
            **config["runtime"],
            "num_episode": episodes,
            "save_episode_interval": None,
            "data_checkpoint_path": None,
            "eval_episode_interval": None,
            "enable_eval_before_training": False,
        }
        models = config["models"]
        cfg_path = tmp / "ppo.yaml"
        cfg_path.write_text(yaml.safe_dump({"runtime": runtime, "models": models}))
        local = subprocess.run(
            [sys.executable, str(HERE / "runtime_entry.py"), "ppo", "--config", str(cfg_path)],
            capture_output=True,
            text=True,
            timeout=1200,
            check=True,
        )
        inproc = steady(_summaries(local.stdout), "seconds")
        dist = distributed("bench-ppo", ["ppo", "--config", str(cfg_path)], runtime, models, tmp)
        dist_s = steady(dist, "seconds")
        rows.append(
            (
                "PPO example episode (s)",
                f"{dist_s:.2f} distributed",
                f"{inproc:.2f} in-process ({dist_s / inproc:.2f}x)",
            )
        )
        ppo_sync = [s for s in dist if "sync_bytes" in s][1:] or dist
        rate = sum(s["sync_bytes"] for s in ppo_sync) / sum(s["sync_seconds"] for s in ppo_sync)
        rows.append(
            (
                "PPO sync, both pairs (MB/s)",
                f"{rate / 2**20:.0f}",
                f"{ppo_sync[0]['sync_bytes'] / 2**20:.2f} MB per episode",
            )
        )

        small = {
            "num_episode": 4,
            "sample_per_episode": 4,
            "generation_batch_size": 1,
            "train_micro_batch_size": 1,
        }
        for mb in (1, 16, 64):
            out = distributed(
                f"bench-transfer-{mb}",
                ["transfer"],
                small,
                {"producer": {"args": {"mb": mb}}, "consumer": {}},
                tmp,
            )
            hop = steady(out, "consumer/hop_s")
            rows.append(
                (
                    f"transfer {mb} MB worker->worker",
                    f"{mb / 1024 / hop:.2f} GB/s",
                    f"{hop * 1000:.1f} ms per hop",
                )
            )
        for mb in (64, 256):
            out = distributed(
                f"bench-sync-{mb}",
                ["sync"],
                small,
                {
                    "inference": {"args": {"mb": mb}},
                    "trainer": {"trainable": True, "args": {"mb": mb}},
                },
                tmp,
            )
            seconds = steady(out, "sync_seconds")
            rows.append(
                (
                    f"parameter sync {mb} MB, 1 replica",
                    f"{mb / 1024 / seconds:.2f} GB/s",
                    f"{seconds * 1000:.0f} ms (gloo, 100 MB buckets)",
                )
            )
    width = max(len(r[0]) for r in rows)
    print(f"{'what'.ljust(width)}  {'rlhfjob':<18}  baseline / detail")
    for what, figure, base in rows:
        print(f"{what.ljust(width)}  {figure:<18}  {base}")


if __name__ == "__main__":
    main()
