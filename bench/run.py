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


STALENESS = (0, 1, 2)
SLEEP_MS = 100  # a sleep-bound episode: 2 batches of generation, 2 train steps, each 100 ms


def _steady(summaries: list[dict], key: str = "seconds") -> float:
    """The median of ``key`` over the episodes after the first (start-up) one."""
    return statistics.median(s.get(key, 0.0) for s in summaries[1:])


def _example_config(tmp: Path, name: str, staleness: int, episodes: int) -> tuple[dict, Path]:
    config = yaml.safe_load((ROOT / "examples" / f"{name}.yaml").read_text())["spec"]
    runtime = {
        **config["runtime"],
        "num_episode": episodes,
        "save_episode_interval": None,
        "data_checkpoint_path": None,
        "eval_episode_interval": 0,
        "enable_eval_before_training": False,
        "max_staleness": staleness,
    }
    path = tmp / f"{name}-{staleness}.yaml"
    path.write_text(yaml.safe_dump({"runtime": runtime, "models": config["models"]}))
    return {"runtime": runtime, "models": config["models"]}, path


def ppo(tmp: Path, episodes: int) -> list[Row]:
    config, cfg = _example_config(tmp, "ppo_sort", 0, episodes)
    runtime, models = config["runtime"], config["models"]

    local = run_script([str(ENTRY), "ppo", "--config", str(cfg)])["result"]
    dist = run_job("bench-ppo", ["ppo", "--config", str(cfg)], runtime, models, tmp)["result"]
    ours, inproc = _steady(dist), _steady(local)
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


def staleness(tmp: Path, episodes: int) -> list[Row]:
    """Episodes per second under ``rlhfjob run`` at each ``max_staleness``, beside 0's."""
    runs: dict[str, dict[int, list[dict]]] = {}
    sleep_runtime = {
        "num_episode": 10,
        "sample_per_episode": 8,
        "generation_batch_size": 4,
        "train_micro_batch_size": 4,
        "train_global_batch_size": 4,
    }
    sleepers = {"policy": {"args": {"ms": SLEEP_MS}}, "trainer": {"args": {"ms": SLEEP_MS}}}
    for k in STALENESS:
        runtime = {**sleep_runtime, "max_staleness": k}
        job = run_job(f"bench-stale-{k}", ["staleness"], runtime, sleepers, tmp)
        runs.setdefault("sleep-bound flow", {})[k] = job["result"]
        for name in ("ppo_sort", "grpo_sort"):
            config, path = _example_config(tmp, name, k, episodes)
            args = ["example", name, "--config", str(path)]
            job = run_job(f"bench-{name.replace('_', '-')}-{k}", args, **config, tmp=tmp)
            runs.setdefault(f"`examples/{name}.py`", {})[k] = job["result"]
    rows = []
    for what, by_k in runs.items():
        base = 1 / _steady(by_k[0])
        for k in STALENESS[1:]:
            rate = 1 / _steady(by_k[k])
            waits = (
                f"waits: training {_steady(by_k[k], 'train_wait_s') * 1000:.0f} ms, "
                f"generation {_steady(by_k[k], 'generation_wait_s') * 1000:.0f} ms "
                f"(at 0: {_steady(by_k[0], 'train_wait_s') * 1000:.0f} / "
                f"{_steady(by_k[0], 'generation_wait_s') * 1000:.0f} ms)"
            )
            target = what.startswith("sleep") and k == 1
            rows.append(
                Row(
                    f"{what}, max_staleness {k}: episodes/s",
                    f"{rate:.2f} episodes/s; {waits}",
                    f"max_staleness 0: {base:.2f} episodes/s",
                    rate / base,
                    "≥1.6× at staleness 1" if target else "",
                    rate / base >= 1.6 if target else None,
                )
            )
    return rows


CURVES = {"ppo_sort": 100, "grpo_sort": 150}  # the README's full-length runs


def _first_at(curve: list[float | None], level: float = 0.9) -> str:
    return next((str(i + 1) for i, r in enumerate(curve) if r is not None and r >= level), "no")


def reward_curves(plot: Path) -> list[Row]:
    """The examples' full-length runs at each ``max_staleness``, in process (where a run
    is bitwise the one `rlhfjob run` makes): episodes and seconds to a sampled reward of
    0.9, and the curves as one PNG."""
    runs: dict[tuple[str, int], tuple[list[dict], float]] = {}
    work = [(name, k) for name in CURVES for k in STALENESS]

    def one(item: tuple[str, int]) -> tuple[list[dict], float]:
        name, k = item
        args = ["--episodes", str(CURVES[name]), "--max-staleness", str(k)]
        start = time.perf_counter()
        result = run_script([str(ENTRY), "example", name, *args], timeout=1800)["result"]
        return result, time.perf_counter() - start

    with ThreadPoolExecutor(max_workers=2) as pool:  # one torch thread each: two cores
        for item, out in zip(work, pool.map(one, work), strict=True):
            runs[item] = out
    rows = []
    for name, k in work:
        summaries, seconds = runs[(name, k)]
        sampled = [s.get("reward/reward_mean") for s in summaries]
        evaluated = [s.get("eval/reward") for s in summaries]
        first = _first_at(sampled)
        when = ""
        if first != "no":
            when = f", {sum(s['seconds'] for s in summaries[: int(first)]):.0f} s learning"
        last = statistics.mean(r for r in sampled[-10:] if r is not None)
        base = runs[(name, 0)][0]
        base_first = _first_at([s.get("reward/reward_mean") for s in base])
        rows.append(
            Row(
                f"`examples/{name}.py`, max_staleness {k}: first episode with sampled reward ≥ 0.9",
                f"{first}{when} (eval: {_first_at(evaluated)}); last 10 {last:.3f}; "
                f"{seconds:.0f} s in all",
                f"max_staleness 0: {base_first}",
                None,
                "reaches 0.9",
                first != "no",
            )
        )
    _plot(runs, plot)
    return rows


def _plot(runs: dict[tuple[str, int], tuple[list[dict], float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CURVES), figsize=(11, 3.5))
    for ax, name in zip(axes, CURVES, strict=True):
        for k in STALENESS:
            summaries = runs[(name, k)][0]
            ax.plot(
                [s["episode"] for s in summaries],
                [s.get("reward/reward_mean") for s in summaries],
                label=f"max_staleness {k}",
            )
        ax.axhline(0.9, color="grey", linestyle=":", linewidth=1)
        ax.set(xlabel="episode", ylabel="sampled reward", ylim=(0, 1.02), title=name)
        ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


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
        for runner, where, times in (
            ("inproc", "in-process", 1.5),
            ("dist", "under rlhfjob run", 1.5),
            ("dist-async", "under rlhfjob run, max_staleness 1", 2.0),
        ):
            ours = figures[runner]["completions_per_s"]
            rows.append(
                Row(
                    f"one GRPO step, {n} completions of {length} tokens, {where}, "
                    "tiny Llama, 1 thread",
                    f"{ours:.1f} completions/s",
                    f"TRL GRPOTrainer: {trl:.1f} completions/s",
                    ours / trl,
                    f"≥{times:g}×",
                    ours / trl >= times,
                )
            )
    return rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, help="also write the tables to this file")
    parser.add_argument("--only", nargs="*", help="sections to run (default: all)")
    parser.add_argument("--ppo-episodes", type=int, default=6)
    parser.add_argument(
        "--curves-png",
        type=Path,
        default=ROOT / "docs" / "async_reward.png",
        help="where the reward-curves section writes its PNG",
    )
    parser.add_argument(
        "--staleness-episodes", type=int, default=8, help="example episodes per staleness"
    )
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
            "staleness": (
                "asynchronous RL: generation ahead of training (`rlhfjob run`)",
                lambda: staleness(tmp, args.staleness_episodes),
            ),
            "reward-curves": (
                "asynchronous RL: the examples' reward at each max_staleness (in process)",
                lambda: reward_curves(args.curves_png),
            ),
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
