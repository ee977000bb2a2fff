"""One GRPO step (generate, score, train) of rlhfjob against TRL's ``GRPOTrainer``.

    python bench/trl_bench.py [LENGTHS] [STEPS]   # default 8,128 and 6

Both run the same job on the same files, made here once:

- the model: the arith example's tiny Llama (2 layers, 64 wide; ``examples/grpo_arith.py``'s
  ``prepare``, without its warm-up and with 256 positions), saved with its byte-level
  BPE tokenizer;
- the prompts: that example's ``"a+b="`` rows with their ``answer`` column, as JSONL;
- the reward: ``rlhfjob.rewards.arith:exact_answer``, which TRL calls unchanged;
- 4 prompts a step answered 8 times (32 completions, one optimizer step, one
  micro-batch), learning rate 1e-5, temperature 1, a KL term of weight 0.04 to the
  reference (so both compute the reference's log-probs), token-mean loss;
- responses of exactly LENGTH tokens: rlhfjob with no EOS to stop at, TRL with
  ``min_new_tokens`` (so both sample and train the same number of tokens);
- no gradient checkpointing (TRL's ``GRPOConfig`` turns it on by default).

Each figure runs in its own process with one torch thread (``rlhfjob run`` starts a
process per model, one thread each): TRL (``use_cpu``), rlhfjob in-process
(``GRPOEngine(config=...).learn()``), rlhfjob under ``rlhfjob run`` (the same job as
a YAML-only manifest, ``entrypoint: {engine: grpo}``), and that with ``max_staleness: 1``
(``dist-async``: the next step's generation overlaps this step's training). A step's time is TRL's
``on_step_begin`` to ``on_step_end`` and rlhfjob's episode ``seconds``; the figure is
32 completions over the median step after the first two (warm-up). Prints one
``RESULT`` JSON line: completions per second by length and runner.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

HERE = Path(__file__).resolve().parent
ARITH = HERE.parent / "examples" / "grpo_arith.py"
PROMPTS, GROUP, LR, KL = 4, 8, 1e-5, 0.04
WARMUP = 2  # steps left out of the median
RUNNERS = ("trl", "inproc", "dist", "dist-async")
REWARD = "rlhfjob.rewards.arith:exact_answer"
_EPISODE = re.compile(r"episode (\d+)/\d+\s+([0-9.]+) samples/s")


def _arith() -> Any:
    spec = importlib.util.spec_from_file_location("grpo_arith", ARITH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prepare(workdir: Path) -> dict[str, str]:
    """The arith example's saved model and tokenizer, untrained and with room for 128-token
    responses, and its prompt file: what both frameworks read."""
    paths = _arith().prepare(workdir, warmup_steps=0, max_positions=256)
    return {"model": str(paths["model"]), "train": str(paths["train"])}


def job_config(paths: dict[str, str], length: int, steps: int) -> dict[str, Any]:
    """rlhfjob's job: the ready-made GRPO engine's runtime and models sections."""
    model = {"model_path": paths["model"]}
    return {
        "runtime": {
            "num_episode": steps,
            "sample_per_episode": PROMPTS,
            "generation_batch_size": PROMPTS,
            "stream_data_loader_type": "dynamic",
            "max_replay_episode": 1,
            "train_micro_batch_size": PROMPTS * GROUP,
            "train_global_batch_size": PROMPTS * GROUP,
            "num_training_epoch": 1,
            "eval_episode_interval": 0,
            "data_path": paths["train"],
            "seed": 1,
        },
        "models": {
            "policy": {
                "args": {**model, "group_size": GROUP, "max_new_tokens": length, "temperature": 1.0}
            },
            "reference": {"args": model},
            "reward": {
                "args": {"reward_fn": REWARD, "kl_coef": 0.0, "tokenizer_path": paths["model"]}
            },
            "grpo_policy": {
                "trainable": True,
                "args": {**model, "lr": LR, "kl_coef": KL, "loss_agg_mode": "token-mean"},
            },
        },
    }


def run_trl(paths: dict[str, str], length: int, steps: int, out: Path) -> list[float]:
    from datasets import load_dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rlhfjob.rewards.arith import exact_answer

    class Steps(TrainerCallback):
        def __init__(self) -> None:
            self.seconds: list[float] = []

        def on_step_begin(self, *args: Any, **kwargs: Any) -> None:
            self.start = time.perf_counter()

        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            self.seconds.append(time.perf_counter() - self.start)

    timer = Steps()
    config = GRPOConfig(
        output_dir=str(out),
        use_cpu=True,
        per_device_train_batch_size=PROMPTS * GROUP,
        num_generations=GROUP,
        max_completion_length=length,
        generation_kwargs={"min_new_tokens": length},
        learning_rate=LR,
        beta=KL,
        temperature=1.0,
        loss_type="dapo",  # the token mean over the batch, as rlhfjob's token-mean
        gradient_checkpointing=False,  # TRL's default is on; rlhfjob's (and the job's) off
        max_steps=steps,
        save_strategy="no",
        report_to="none",
        logging_steps=1,
        disable_tqdm=True,
        seed=1,
        dataloader_num_workers=0,
    )
    trainer = GRPOTrainer(
        model=paths["model"],
        reward_funcs=[exact_answer],
        args=config,
        train_dataset=load_dataset("json", data_files=paths["train"], split="train"),
        processing_class=AutoTokenizer.from_pretrained(paths["model"]),
        callbacks=[timer],
    )
    trainer.train()
    return timer.seconds


def run_inproc(paths: dict[str, str], length: int, steps: int) -> list[float]:
    from rlhfjob.algorithms import GRPOEngine

    summaries = GRPOEngine(config=job_config(paths, length, steps)).learn(progress=False)
    return [float(s["seconds"]) for s in summaries]


def run_dist(
    paths: dict[str, str], length: int, steps: int, tmp: Path, *, staleness: int = 0
) -> list[float]:
    config = job_config(paths, length, steps)
    config["runtime"]["max_staleness"] = staleness
    manifest = {
        "apiVersion": "rlhf.dev/v1alpha1",
        "kind": "RLHFJob",
        "metadata": {"name": f"bench-trl-{length}"},
        "spec": {
            "image": "rlhfjob:dev",
            "entrypoint": {"engine": "grpo"},
            **config,
            "runPolicy": {"backoffLimit": 0},
        },
    }
    path = tmp / f"grpo-{length}.yaml"
    path.write_text(yaml.safe_dump(manifest))
    proc = subprocess.run(
        [sys.executable, "-m", "rlhfjob_operator.cli", "run", str(path)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if proc.returncode:
        raise RuntimeError(f"rlhfjob run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    # The driver's episode lines give samples/s over the episode's own time.
    lines = _EPISODE.finditer(proc.stdout + proc.stderr)
    seconds = {int(m[1]): PROMPTS * GROUP / float(m[2]) for m in lines}
    if sorted(seconds) != list(range(1, steps + 1)):
        raise RuntimeError(f"episode lines missing: {sorted(seconds)}\n{proc.stdout[-3000:]}")
    return [seconds[e] for e in sorted(seconds)]


def worker(runner: str, paths: dict[str, str], length: int, steps: int, tmp: Path) -> None:
    """One runner in this process: prints ``RESULT {"seconds": [...]}``."""
    torch.set_num_threads(1)
    if runner == "trl":
        seconds = run_trl(paths, length, steps, tmp / "trl-out")
    elif runner == "inproc":
        seconds = run_inproc(paths, length, steps)
    else:
        seconds = run_dist(paths, length, steps, tmp, staleness=int(runner == "dist-async"))
    print("RESULT " + json.dumps({"seconds": seconds}))


def _spawn(runner: str, paths: dict[str, str], length: int, steps: int, tmp: Path) -> Any:
    argv = [sys.executable, __file__, "--worker", runner, json.dumps(paths)]
    argv += [str(length), str(steps), str(tmp)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=1800, env=env)
    if proc.returncode:
        raise RuntimeError(f"{runner} at {length} failed:\n{proc.stderr[-3000:]}")
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(f"{runner} printed no RESULT:\n{proc.stdout[-3000:]}")


def main(argv: list[str]) -> int:
    if argv[:1] == ["--worker"]:
        runner, paths, length, steps, tmp = argv[1:6]
        worker(runner, json.loads(paths), int(length), int(steps), Path(tmp))
        return 0
    lengths = [int(x) for x in (argv[0] if argv else "8,128").split(",")]
    steps = int(argv[1]) if len(argv) > 1 else 6
    if steps <= WARMUP:
        raise SystemExit(f"STEPS must be more than the {WARMUP} warm-up steps, got {steps}")
    with tempfile.TemporaryDirectory(prefix="rlhfjob-trl-bench-") as tmp:
        paths = prepare(Path(tmp))
        result: dict[str, Any] = {"completions_per_step": PROMPTS * GROUP, "lengths": {}}
        for length in lengths:
            figures = {}
            for runner in RUNNERS:
                seconds = _spawn(runner, paths, length, steps, Path(tmp))["seconds"]
                median = statistics.median(seconds[WARMUP:])
                figures[runner] = {
                    "completions_per_s": PROMPTS * GROUP / median,
                    "step_s": seconds,
                }
            result["lengths"][str(length)] = figures
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
