"""rlhfjob against Ray, raw TensorPipe, raw gloo, memcpy, generation without a KV cache
and TRL's GRPOTrainer, in one run: ``make bench``.

Prints Markdown tables, each figure beside its baseline with the ratio (how
many times better rlhfjob is; for parameter sync, the share of the flat
broadcast's rate) and the issue's target where there is one. Asserts
nothing: the figures depend on the machine, which the header names with its
load average before and after. ``--out FILE`` also writes the tables there.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import yaml

from common import (
    ENTRY,
    HERE,
    ROOT,
    Row,
    best_of,
    gbps,
    load_average,
    machine,
    run_job,
    run_script,
    table,
)
from rlhfjob_operator.local import free_port

SIZES_MB = (1, 16, 64, 256)
SMALL = {
    "num_episode": 1,
    "sample_per_episode": 1,
    "generation_batch_size": 1,
    "train_micro_batch_size": 1,
}


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f} ms" if seconds < 0.01 else f"{seconds * 1000:.1f} ms"


@functools.cache
def ray_figures() -> dict:
    """Ray's small calls and transfers, from one Ray start."""
    return run_script([str(HERE / "ray_bench.py"), ",".join(map(str, SIZES_MB))])


@functools.cache
def raw_rpc_figures() -> dict:
    return run_script([str(HERE / "raw_rpc.py"), str(free_port())])


def calls(tmp: Path) -> list[Row]:
    ours = run_job("bench-calls", ["calls", "500", "2000"], SMALL, {"echo": {}}, tmp)["result"]
    ray, raw = ray_figures(), raw_rpc_figures()
    rows = []
    for name, other in (("Ray actor call", ray), ("raw torch.distributed.rpc, defaults", raw)):
        ratio = other["sync_s"] / ours["sync_s"]
        target = name.startswith("Ray")
        rows.append(
            Row(
                "sync latency, one small call and its result",
                _ms(ours["sync_s"]),
                f"{name}: {_ms(other['sync_s'])}",
                ratio,
                "≥10× Ray" if target else "",
                ratio >= 10 if target else None,
            )
        )
    for name, other in (("Ray actor call", ray), ("raw torch.distributed.rpc, defaults", raw)):
        ratio = ours["calls_per_s"] / other["calls_per_s"]
        target = name.startswith("Ray")
        rows.append(
            Row(
                "async small calls, then wait for all",
                f"{ours['calls_per_s']:.0f} calls/s",
                f"{name}: {other['calls_per_s']:.0f} calls/s",
                ratio,
                "≥10× Ray" if target else "",
                ratio >= 10 if target else None,
            )
        )
    rows.append(
        Row(
            "CPU time of one async call (where the time goes)",
            f"driver {ours['driver_cpu_per_call_s'] * 1e6:.0f} us, "
            f"worker {ours['worker_cpu_per_call_s'] * 1e6:.0f} us",
            "",
            None,
        )
    )
    return rows


def _memcpy(mb: int) -> tuple[float, float]:
    """Seconds of ``copy_`` into a preallocated buffer: one thread, and split over two
    (as the shared-memory path copies)."""
    src = torch.full((mb * 2**18,), 1.0)
    dst = torch.empty_like(src)
    one = best_of(lambda: dst.copy_(src), 5)
    mid = src.numel() // 2
    with ThreadPoolExecutor(1) as pool:

        def split() -> None:
            rest = pool.submit(dst[mid:].copy_, src[mid:])
            dst[:mid].copy_(src[:mid])
            rest.result()

        two = best_of(split, 5)
    return one, two


def transfer(tmp: Path) -> list[Row]:
    reps = 4
    sizes = [mb for mb in SIZES_MB for _ in range(reps)]
    runtime = {**SMALL, "num_episode": len(sizes), "data_shuffle": False}
    summaries = run_job(
        "bench-transfer",
        ["transfer", ",".join(map(str, sizes))],
        runtime,
        {"producer": {}, "consumer": {}},
        tmp,
    )["result"]
    ray, raw = ray_figures(), raw_rpc_figures()
    rows = []
    for mb in SIZES_MB:
        hops = [s[f"consumer/hop_s/{mb}"] for s in summaries if f"consumer/hop_s/{mb}" in s]
        ours = min(hops[1:])  # the first of a size pays for its slot's page faults
        nbytes = mb * 2**20
        one, two = _memcpy(mb)
        rate = gbps(nbytes, ours)
        what = f"same-host tensor, {mb} MB, worker → worker"
        at64 = mb == 64
        ray_ratio = ray[f"hop_s/{mb}"] / ours
        rows.append(
            Row(
                what,
                f"{rate:.2f} GB/s ({_ms(ours)})",
                f"Ray object transfer: {gbps(nbytes, ray[f'hop_s/{mb}']):.2f} GB/s",
                ray_ratio,
                "≥20× Ray" if at64 else "",
                ray_ratio >= 20 if at64 else None,
            )
        )
        rows.append(
            Row(
                what,
                f"{rate:.2f} GB/s",
                f"TensorPipe defaults (rpc_sync round trip): "
                f"{gbps(nbytes, raw[f'hop_s/{mb}']):.2f} GB/s",
                raw[f"hop_s/{mb}"] / ours,
            )
        )
        rows.append(
            Row(
                what,
                f"{rate:.2f} GB/s",
                f"copy_ into a preallocated buffer (the limit): {gbps(nbytes, one):.2f} GB/s, "
                f"split over 2 threads {gbps(nbytes, two):.2f} GB/s",
                one / ours,
                "≥5 GB/s" if at64 else "",
                rate >= 5 if at64 else None,
            )
        )
    return rows


def sync(sweep: str) -> list[Row]:
    rows = []
    for mb in (256, 1024):
        for replicas in (1, 3):
            result = run_script([str(HERE / "sync_bench.py"), str(mb), str(replicas), sweep])
            seconds, nbytes = result["seconds"], result["bytes"]
            ours = seconds["rlhfjob"]
            what = f"parameter sync, {nbytes / 2**20:.0f} MB to {replicas} replica(s)"
            share = seconds["flat"] / ours
            rows.append(
                Row(
                    what,
                    f"{gbps(nbytes, ours):.2f} GB/s ({_ms(ours)}, 100 MB buckets)",
                    f"one flat-tensor gloo broadcast (the limit): "
                    f"{gbps(nbytes, seconds['flat']):.2f} GB/s",
                    share,
                    "≥0.90 of flat",
                    share >= 0.9,
                )
            )
            rows.append(
                Row(
                    what,
                    f"{gbps(nbytes, ours):.2f} GB/s",
                    f"per-parameter broadcast ({result['params']} tensors): "
                    f"{gbps(nbytes, seconds['per-parameter']):.2f} GB/s",
                    seconds["per-parameter"] / ours,
                )
            )
            for key in sorted((k for k in seconds if k.startswith("bucket ")), key=_mb):
                rows.append(
                    Row(
                        what,
                        f"{key} MB buckets: {gbps(nbytes, seconds[key]):.2f} GB/s",
                        f"flat: {gbps(nbytes, seconds['flat']):.2f} GB/s",
                        seconds["flat"] / seconds[key],
                    )
                )
    return rows


def _mb(key: str) -> int:
    return int(key.split()[1])


def pipeline(tmp: Path) -> list[Row]:
    runtime = {**SMALL, "num_episode": 3, "sample_per_episode": 16, "data_shuffle": False}
    models = {f"m{i}": {"args": {"ms": 50}} for i in range(4)}

    def rate(args: list[str], name: str) -> float:
        summaries = run_job(name, ["pipeline", *args], runtime, models, tmp)["result"]
        return statistics.median(s["samples_per_s"] for s in summaries[1:])

    flowing = rate(["50"], "bench-pipeline")
    staged = rate(["50", "stages"], "bench-stages")
    ratio = flowing / staged
    return [
        Row(
            "pipelining: 4 models, 50 ms sleep-bound steps, 4 workers, 16 batches an episode",
            f"{flowing:.1f} samples/s (env flow)",
            f"the same flow stage by stage: {staged:.1f} samples/s",
            ratio,
            "≥1.8×",
            ratio >= 1.8,
        )
    ]


def ppo(tmp: Path, episodes: int) -> list[Row]:
    config = yaml.safe_load((ROOT / "examples" / "ppo_sort.yaml").read_text())["spec"]
    runtime = {
        **config["runtime"],
        "num_episode": episodes,
        "save_episode_interval": None,
        "data_checkpoint_path": None,
        "eval_episode_interval": None,
        "enable_eval_before_training": False,
    }
    models = config["models"]
    cfg = tmp / "ppo.yaml"
    cfg.write_text(yaml.safe_dump({"runtime": runtime, "models": models}))

    def steady(summaries: list[dict]) -> float:
        return statistics.median(s["seconds"] for s in summaries[1:])

    local = run_script([str(ENTRY), "ppo", "--config", str(cfg)])["result"]
    dist = run_job("bench-ppo", ["ppo", "--config", str(cfg)], runtime, models, tmp)["result"]
    ours, inproc = steady(dist), steady(local)
    processes = 1 + sum(m.get("num_replica", 1) for m in models.values())
    rows = [
        Row(
            "framework overhead: PPO example episode, 1 replica each",
            f"{ours:.3f} s distributed ({processes} processes)",
            f"in-process: {inproc:.3f} s",
            inproc / ours,
            "≤10% slower (ratio ≥0.91)",
            ours <= inproc * 1.10,
        )
    ]
    synced = [s for s in dist[1:] if "sync_bytes" in s]
    if synced:
        rows.append(
            Row(
                "parameter sync in the PPO example (both pairs)",
                f"{statistics.median(s['sync_seconds'] for s in synced) * 1000:.1f} ms "
                f"an episode ({synced[0]['sync_bytes'] / 2**20:.2f} MB)",
                "",
                None,
            )
        )
    return rows


def memory(tmp: Path) -> list[Row]:
    def peak(samples: int) -> float:
        runtime = {
            "num_episode": 2,
            "sample_per_episode": samples,
            "generation_batch_size": 32,
            "train_micro_batch_size": 32,
            "train_global_batch_size": 64,
        }
        models = {"blob": {}, "sink": {"trainable": True}}
        return run_job(f"bench-memory-{samples}", ["memory"], runtime, models, tmp)[
            "driver_peak_rss_mb"
        ]

    small, large = peak(64), peak(640)
    return [
        Row(
            "driver peak RSS, samples of 256 KB: 64 vs 640 an episode",
            f"{small:.0f} MB vs {large:.0f} MB (+{large - small:.0f} MB for 144 MB more samples)",
            "—",
            None,
            "flat (within 15% + 20 MB)",
            large <= small * 1.15 + 20,
        )
    ]


def startup() -> list[Row]:
    result = run_script([str(HERE / "startup_bench.py")])
    ours, inproc = result["distributed_s"], result["in_process_s"]
    rows = [
        Row(
            "time to the first episode, GRPO example (from the command's start)",
            f"{ours:.1f} s under rlhfjob run ({result['processes']} processes)",
            f"in-process: {inproc:.1f} s",
            inproc / ours,
            "≤13 s (TRL GRPOTrainer on this model, as the issue measured it)",
            ours <= 13,
        )
    ]
    for phase, seconds in result["phases_s"].items():
        rows.append(Row(f"rlhfjob run: the last process {phase}", f"at {seconds:.1f} s", "", None))
    return rows


def generation(lengths: list[int]) -> list[Row]:
    result = run_script([str(HERE / "gen_bench.py"), ",".join(map(str, lengths))])
    rows = []
    for model, figures in result["models"].items():
        for length in lengths:
            tps = figures[str(length)]
            ratio = tps["cached"] / tps["recompute"]
            target = length == 512
            rows.append(
                Row(
                    f"generation, {model}: {result['batch']} prompts of {result['prompt']} "
                    f"tokens, {length}-token responses, 1 thread",
                    f"{tps['cached']:.0f} tokens/s (KV cache)",
                    f"recompute per token (before the cache): {tps['recompute']:.0f} tokens/s",
                    ratio,
                    "≥10×" if target else "",
                    ratio >= 10 if target else None,
                )
            )
    return rows


def trainer_memory() -> list[Row]:
    result = run_script([str(HERE / "memory_bench.py")])
    base, *others = result["settings"]
    return [
        Row(
            f"one PolicyTrainer step, {result['what']}, 1 thread: {row['setting']}",
            f"{row['mib']:.2f} MiB of activations a micro-batch, {row['step_s']:.3f} s",
            f"{base['setting']}: {base['mib']:.2f} MiB, {base['step_s']:.3f} s",
            base["mib"] / row["mib"],
        )
        for row in others
    ]


def grpo_step(lengths: list[int], steps: int) -> list[Row]:
    result = run_script(
        [str(HERE / "trl_bench.py"), ",".join(map(str, lengths)), str(steps)], timeout=3600
    )
    n = result["completions_per_step"]
    rows = []
    for length in lengths:
        figures = result["lengths"][str(length)]
        trl = figures["trl"]["completions_per_s"]
        for runner, where in (("inproc", "in-process"), ("dist", "under rlhfjob run")):
            ours = figures[runner]["completions_per_s"]
            rows.append(
                Row(
                    f"one GRPO step, {n} completions of {length} tokens, {where}, "
                    "tiny Llama, 1 thread",
                    f"{ours:.1f} completions/s",
                    f"TRL GRPOTrainer: {trl:.1f} completions/s",
                    ours / trl,
                    "≥1.5×",
                    ours / trl >= 1.5,
                )
            )
    return rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, help="also write the tables to this file")
    parser.add_argument("--only", nargs="*", help="sections to run (default: all)")
    parser.add_argument("--ppo-episodes", type=int, default=6)
    parser.add_argument(
        "--gen-lengths", default="16,128,512", help="response lengths of the generation bench"
    )
    parser.add_argument("--sweep", default="4,25,400", help="bucket sizes (MB) for the sweep")
    parser.add_argument(
        "--grpo-lengths", default="8,128", help="response lengths of the GRPO step against TRL"
    )
    parser.add_argument("--grpo-steps", type=int, default=6, help="steps per GRPO run")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.monotonic()
    before = load_average()
    out: list[str] = [
        "## Benchmarks",
        "",
        f"{datetime.datetime.now().isoformat(timespec='minutes')}, `make bench` "
        f"(`python bench/run.py`), on {machine()}.",
        f"Load average before: {before[0]:.2f} / {before[1]:.2f} / {before[2]:.2f}.",
    ]
    if before[0] > 1.5:
        out.append("**The machine was busy (load > 1.5): the figures are noisy.**")
    print("\n".join(out), flush=True)
    with tempfile.TemporaryDirectory(prefix="rlhfjob-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        sections = {
            "calls": ("small remote calls", lambda: calls(tmp)),
            "transfer": ("same-host tensor transfer", lambda: transfer(tmp)),
            "sync": ("parameter sync (gloo, CPU)", lambda: sync(args.sweep)),
            "pipeline": ("pipelining", lambda: pipeline(tmp)),
            "ppo": ("framework overhead", lambda: ppo(tmp, args.ppo_episodes)),
            "memory": ("driver memory", lambda: memory(tmp)),
            "startup": ("start-up", startup),
            "generation": (
                "generation (KV cache)",
                lambda: generation([int(n) for n in args.gen_lengths.split(",")]),
            ),
            "trainer-memory": ("trainer memory settings", trainer_memory),
            "grpo": (
                "one GRPO step against TRL",
                lambda: grpo_step([int(n) for n in args.grpo_lengths.split(",")], args.grpo_steps),
            ),
        }
        for key, (title, run) in sections.items():
            if args.only and key not in args.only:
                continue
            text = table(title, run())
            print("\n" + text, flush=True)
            out += ["", text]
    after = load_average()
    tail = (
        f"\nLoad average after: {after[0]:.2f} / {after[1]:.2f} / {after[2]:.2f}; "
        f"the run took {time.monotonic() - started:.0f} s."
    )
    print(tail, flush=True)
    out.append(tail)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
