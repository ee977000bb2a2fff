"""Engine, Environment, Trainer, Evaluator: the episode loop of ChatLearn's Custom Flow API.

One episode:

1. ``before_episode`` on every module;
2. take ``sample_per_episode`` prompts from the stream (continuing across
   episodes, wrapping and reshuffling at the end of the dataset), run the env
   flow over them in ``generation_batch_size`` batches, and collect the
   outputs in the StreamDataset;
3. the replay sample manager (if set) rewrites the samples from the last
   ``max_replay_episode`` episodes;
4. run the trainer flow ``num_training_epoch`` times over the samples, one
   call per global batch with its micro-batches, shuffled;
5. parameter sync of every pair whose trainer's ``sync_frequency`` divides
   the episode number (1-based);
6. ``after_episode``; evaluation every ``eval_episode_interval``; checkpoint
   every ``save_episode_interval``.

Fresh runs also sync every pair once before the first episode, so inference
models start from their trainers' weights.
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlhfjob import checkpoint as ckpt
from rlhfjob import context
from rlhfjob import metrics as prom
from rlhfjob.data import EpisodeReplayBuffer, PromptStream, StreamDataset, collate
from rlhfjob.executor import Executor, LocalExecutor
from rlhfjob.flow import FlowGraph, run_graph, trace
from rlhfjob.module import BaseModule
from rlhfjob_operator.contract import ENV_TERMINATION_LOG, TERMINATION_LOG
from rlhfjob_operator.progress import from_summary
from rlhfjob_operator.spec import JobConfig, load_job_config

__all__ = ["Engine", "Environment", "Evaluator", "Trainer"]

ReplayManager = Callable[[list[EpisodeReplayBuffer]], list[Any]]


class _Component:
    """A traced flow; traced at construction so a bad flow fails before any model runs."""

    def __init__(self, flow: Callable[[Any], Any]) -> None:
        self.flow = flow
        self.graph: FlowGraph = trace(flow)

    @property
    def modules(self) -> list[BaseModule]:
        return self.graph.modules


class Environment(_Component):
    """The env flow: inference models that turn prompts into training samples."""


class Trainer(_Component):
    """The trainer flow: trained models, each called with one global batch."""


class Evaluator(_Component):
    """The eval flow over its own dataset, reduced to metrics by ``post_process``."""

    def __init__(self, flow: Callable[[Any], Any]) -> None:
        super().__init__(flow)
        self.dataset: list[Any] | None = None
        self._post_process: Callable[[list[Any], dict[str, Any]], dict[str, float]] | None = None

    def set_dataset(self, dataset: Sequence[Any]) -> Evaluator:
        self.dataset = list(dataset)
        if not self.dataset:
            raise ValueError("Evaluator.set_dataset got an empty dataset")
        return self

    def set_post_process_func(
        self, fn: Callable[[list[Any], dict[str, Any]], dict[str, float]]
    ) -> Evaluator:
        """ChatLearn's hook: ``fn(results, eval_info) -> metrics`` replaces ``post_process``."""
        self._post_process = fn
        return self

    def post_process(self, results: list[Any], eval_info: dict[str, Any]) -> dict[str, float]:
        """Reduce the eval flow's per-batch outputs to metrics.

        Default: the mean over all samples of every numeric tensor key. Lists,
        strings and non-numeric tensors are skipped. Override, or use
        ``set_post_process_func``, for anything else.
        """
        if self._post_process is not None:
            return self._post_process(results, eval_info)
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for batch in results:
            if not isinstance(batch, dict):
                continue
            for key, value in batch.items():
                if not isinstance(value, torch.Tensor) or not value.numel():
                    continue
                if value.dtype != torch.bool and not value.dtype.is_complex:
                    sums[key] = sums.get(key, 0.0) + float(value.double().sum())
                    counts[key] = counts.get(key, 0) + value.numel()
        return {key: sums[key] / counts[key] for key in sums}


class Engine:
    """Runs the episode loop over an Environment, a Trainer and an Evaluator (any may be None).

    ``config``: a dict, a YAML path or a ``JobConfig`` with the ``runtime``
    and ``models`` sections; validated at construction (SpecError names the
    key). Subclass it (a ``CustomEngine``) to build flows in ``__init__``
    and call ``super().__init__(...)``.
    """

    def __init__(
        self,
        environment: Environment | None = None,
        trainer: Trainer | None = None,
        evaluator: Evaluator | None = None,
        *,
        config: JobConfig | dict[str, Any] | str | None = None,
        executor: Executor | None = None,
    ) -> None:
        if config is None and context.job is not None:
            # Under `rlhfjob run` or the operator: the job spec's sections.
            config = JobConfig(runtime=context.job.spec.runtime, models=context.job.spec.models)
        self.config = load_job_config(config)
        self.environment = environment
        self.trainer = trainer
        self.evaluator = evaluator
        self._executor = executor
        self._datasets: list[list[Any]] | None = None
        self._sync_pairs: list[tuple[BaseModule, BaseModule]] = []
        self._replay_manager: ReplayManager | None = None
        self.summaries: list[dict[str, Any]] = []
        self._validate()

    # --- building ------------------------------------------------------------

    def set_environment(self, environment: Environment) -> Engine:
        self.environment = environment
        self._validate()
        return self

    def set_trainer(self, trainer: Trainer) -> Engine:
        self.trainer = trainer
        self._validate()
        return self

    def set_evaluator(self, evaluator: Evaluator) -> Engine:
        self.evaluator = evaluator
        self._validate()
        return self

    def set_dataset(self, dataset: Sequence[Any]) -> Engine:
        """The prompts of the env flow; taken ``sample_per_episode`` at a time, wrapping."""
        return self.set_multiple_datasets([dataset])

    def set_multiple_datasets(self, datasets: Sequence[Sequence[Any]]) -> Engine:
        """Several prompt sets; the stream takes one prompt from each in turn."""
        if not datasets:
            raise ValueError("set_multiple_datasets got no datasets")
        self._datasets = [list(d) for d in datasets]
        for index, data in enumerate(self._datasets):
            if not data:
                raise ValueError(f"prompt dataset {index} is empty")
        return self

    def set_parameter_sync(self, src: BaseModule, dst: BaseModule) -> Engine:
        """After training, copy ``src``'s (trainer) weights into ``dst`` (its inference twin)."""
        for module, role in ((src, "src"), (dst, "dst")):
            if not isinstance(module, BaseModule):
                raise ValueError(f"set_parameter_sync {role} must be a BaseModule, got {module!r}")
        if src is dst:
            raise ValueError(
                f"set_parameter_sync({src.name}, {dst.name}): a module cannot sync to itself"
            )
        if any(d is dst for _, d in self._sync_pairs):
            raise ValueError(f"{dst.name} already receives parameters from another model")
        self._sync_pairs.append((src, dst))
        self._validate()
        return self

    def set_replay_sample_manager(self, fn: ReplayManager) -> Engine:
        """``fn(episode_replay_buffers) -> samples``: rewrites what the trainers see.

        The buffers are the last ``max_replay_episode`` episodes (at least this
        one), oldest first; GRPO computes group advantages here.
        """
        if not callable(fn):
            raise ValueError("set_replay_sample_manager takes a function")
        self._replay_manager = fn
        return self

    @property
    def modules(self) -> list[BaseModule]:
        """Every module of every flow and sync pair, each once, in first-use order."""
        seen: dict[int, BaseModule] = {}
        for component in (self.environment, self.trainer, self.evaluator):
            if component is not None:
                for module in component.modules:
                    seen.setdefault(id(module), module)
        for src, dst in self._sync_pairs:
            seen.setdefault(id(src), src)
            seen.setdefault(id(dst), dst)
        return list(seen.values())

    def _validate(self) -> None:
        by_name: dict[str, BaseModule] = {}
        for module in self.modules:
            other = by_name.setdefault(module.name, module)
            if other is not module:
                raise ValueError(
                    f"two different modules are named {module.name!r}; module names key the "
                    "config and checkpoints, so each must be unique"
                )
        env = self.environment
        if env is not None and self.trainer is not None and env.graph.output is None:
            raise ValueError(
                f"env flow {env.graph.name} returns nothing, so the trainer "
                "would get no samples; return the last model call's output"
            )

    def _check_config_names(self) -> None:
        names = {m.name for m in self.modules}
        unknown = sorted(set(self.config.models) - names)
        if unknown:
            raise ValueError(
                f"config models {unknown} name no module of this engine (modules: "
                f"{sorted(names)}); fix the name or remove the section"
            )

    # --- running -------------------------------------------------------------

    def learn(self, *, progress: bool = True) -> list[dict[str, Any]]:
        """Run episodes up to ``runtime.num_episode``; returns one summary dict per episode.

        With ``enable_resume_training`` and a complete checkpoint under
        ``data_checkpoint_path``, continues after it; the summaries of the
        episodes before it come from the checkpoint.
        """
        if context.role == "worker":
            raise context.StopEntrypoint
        if self.environment is None and self.trainer is None and self.evaluator is None:
            raise ValueError("the engine has no environment, trainer or evaluator to run")
        if self.environment is not None and self._datasets is None:
            raise ValueError("the environment has no prompts; call engine.set_dataset(prompts)")
        if self.evaluator is not None and self.evaluator.dataset is None:
            raise ValueError("the evaluator has no dataset; call Evaluator(...).set_dataset(data)")
        self._check_config_names()
        for module in self.modules:  # a bad models.<name>.args key fails here, before any worker
            module.parse_config(self.config)
        if context.env is not None and context.env.checkpoint_dir:
            # The launcher's checkpoint directory (a mounted volume in a pod) wins.
            runtime = self.config.runtime.model_copy(
                update={"data_checkpoint_path": context.env.checkpoint_dir}
            )
            self.config = self.config.model_copy(update={"runtime": runtime})
        _seed_everything(self.config.runtime.seed)
        executor = self._executor or _default_executor(self.config)
        try:
            executor.setup(self.modules, sync_pairs=self._sync_pairs)
            run = _Run(self, executor)
            summaries = run.learn(progress=progress)
        finally:
            executor.shutdown()
        if context.role == "driver":
            _report_end(summaries, num_episode=self.config.runtime.num_episode)
        return summaries


class _Run:
    """The state of one ``learn()``: positions, counters, the stream and history."""

    def __init__(self, engine: Engine, executor: Executor) -> None:
        self.engine = engine
        self.ex = executor
        self.rt = engine.config.runtime
        self.episode = 0  # completed episodes
        self.iterations: dict[str, int] = {}
        self.summaries: list[dict[str, Any]] = []
        self.stream: PromptStream | None = None
        if engine.environment is not None:
            assert engine._datasets is not None
            first = engine.environment.graph.entry_modules[0]
            datasets = [
                executor.build_dataset(first, data, is_eval=False) for data in engine._datasets
            ]
            self.stream = PromptStream(datasets, seed=self.rt.seed, shuffle=self.rt.data_shuffle)
        self.eval_data: list[Any] | None = None
        if engine.evaluator is not None:
            assert engine.evaluator.dataset is not None
            first = engine.evaluator.graph.entry_modules[0]
            self.eval_data = executor.build_dataset(first, engine.evaluator.dataset, is_eval=True)
        self.dataset = StreamDataset(
            sample_per_episode=self.rt.sample_per_episode,
            micro_batch=self.rt.train_micro_batch_size,
            global_batch=self.rt.global_batch_size,
            loader=self.rt.stream_data_loader_type,
            max_replay_episode=self.rt.max_replay_episode,
            seed=self.rt.seed,
            shuffle=self.rt.data_shuffle,
        )

    # --- one call ------------------------------------------------------------

    def _iteration(self, label: str) -> int:
        count = self.iterations.get(label, 0)
        self.iterations[label] = count + 1
        return count

    def _run(self, graph: FlowGraph, flow_input: Any, *, iterate: bool) -> dict[int, Any]:
        return run_graph(
            graph,
            flow_input,
            lambda node, inputs: self.ex.call(
                node, inputs, iteration=self._iteration(node.label) if iterate else None
            ),
        )

    # --- the loop --------------------------------------------------------------

    def learn(self, *, progress: bool) -> list[dict[str, Any]]:
        resumed = self._maybe_resume()
        if not resumed:
            for src, dst in self.engine._sync_pairs:
                self.ex.sync(src, dst, bucket_mb=self.rt.coalesced_buffer_mb)
        served = prom.for_driver()  # Prometheus metrics, when this process serves them
        if served is not None:
            restarts = context.env.restart_generation if context.env is not None else 0
            served.start(num_episode=self.rt.num_episode, episode=self.episode, restarts=restarts)
        bar = _progress(total=self.rt.num_episode, initial=self.episode, enabled=progress)
        try:
            if (
                not resumed
                and self.rt.enable_eval_before_training
                and self.engine.evaluator is not None
            ):
                metrics = self.evaluate()
                _write(bar, "before training  " + _format(metrics))
            while self.episode < self.rt.num_episode:
                summary = self.run_episode()
                self.summaries.append(summary)
                if served is not None:
                    served.record_episode(summary, dataset_samples=len(self.dataset.samples))
                    served.observe_steps(self.ex.step_seconds())
                _write(bar, _format(summary, total=self.rt.num_episode))
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        self.engine.summaries = self.summaries
        return self.summaries

    def run_episode(self) -> dict[str, Any]:
        start = time.perf_counter()
        number = self.episode + 1
        summary: dict[str, Any] = {"episode": number}
        self.ex.hook("before_episode")
        samples = self.generate() if self.engine.environment is not None else []
        summary["samples"] = len(samples)
        if self.engine.trainer is not None:
            manager = self.engine._replay_manager
            if manager is not None:
                samples = self.ex.materialize(samples)
            self.dataset.set_episode(number, samples, manager)
            summary["train_steps"] = self.train()
            self.ex.wait()  # training done everywhere: what follows times the sync alone
            sync_start, synced = time.perf_counter(), 0
            for src, dst in self.engine._sync_pairs:
                if number % self.engine.config.model(src.name).sync_frequency == 0:
                    synced += self.ex.sync(src, dst, bucket_mb=self.rt.coalesced_buffer_mb)
            if synced:
                summary["sync_seconds"] = time.perf_counter() - sync_start
                summary["sync_bytes"] = synced
        self.ex.release()
        self.ex.hook("after_episode")
        for name, metrics in self.ex.metrics().items():
            for key, value in metrics.items():
                summary[f"{name}/{key}"] = value
        interval = self.rt.eval_episode_interval
        if self.engine.evaluator is not None and interval and number % interval == 0:
            summary.update(self.evaluate())
        elapsed = time.perf_counter() - start
        summary["seconds"] = elapsed
        summary["samples_per_s"] = len(samples) / elapsed if elapsed > 0 else math.inf
        self.episode = number
        save = self.rt.save_episode_interval
        if save and number % save == 0:
            self.save(summary)
        return summary

    def generate(self) -> list[Any]:
        assert self.engine.environment is not None and self.stream is not None
        graph = self.engine.environment.graph
        assert graph.output is not None or self.engine.trainer is None
        prompts = self.stream.take(self.rt.sample_per_episode)
        size = self.rt.generation_batch_size
        handles = []
        for start in range(0, len(prompts), size):
            batch = collate(prompts[start : start + size])
            results = self._run(graph, batch, iterate=True)
            if graph.output is not None:
                handles.append(results[graph.output])
        label = graph.nodes[graph.output].label if graph.output is not None else ""
        samples: list[Any] = []
        for handle in handles:
            samples.extend(self.ex.samples(handle, label=label))
        return samples

    def train(self) -> int:
        assert self.engine.trainer is not None
        steps = 0
        for epoch in range(self.rt.num_training_epoch):
            for batch in self.dataset.global_batches(episode=self.episode + 1, epoch=epoch):
                self._run(self.engine.trainer.graph, batch, iterate=True)
                steps += 1
        return steps

    def evaluate(self) -> dict[str, float]:
        evaluator = self.engine.evaluator
        assert evaluator is not None and self.eval_data is not None
        graph = evaluator.graph
        size = self.rt.generation_batch_size
        handles = []
        for start in range(0, len(self.eval_data), size):
            results = self._run(graph, collate(self.eval_data[start : start + size]), iterate=False)
            if graph.output is not None:
                handles.append(results[graph.output])
        outputs = [self.ex.fetch(h) for h in handles]
        metrics = evaluator.post_process(outputs, {"episode": self.episode})
        return {f"eval/{k}": float(v) for k, v in metrics.items()}

    # --- checkpoints -------------------------------------------------------------

    def save(self, summary: dict[str, Any]) -> None:
        path = self.rt.data_checkpoint_path
        assert path is not None, "RuntimeSpec requires a path when saving is on"
        engine_state = {
            "episode": self.episode,
            "iterations": dict(self.iterations),
            "stream": self.stream.state_dict() if self.stream else None,
            "dataset": self.dataset.state_dict(),
            "summaries": [*self.summaries, summary],
            "rng": ckpt.capture_rng(),
        }
        ckpt.save_checkpoint(
            path,
            episode=self.episode,
            modules=self.ex.state_dicts(iteration=self.episode),
            engine=engine_state,
        )

    def _maybe_resume(self) -> bool:
        if not self.rt.enable_resume_training:
            return False
        latest = ckpt.latest_checkpoint(self.rt.data_checkpoint_path)
        if latest is None:
            return False
        modules, state = ckpt.load_checkpoint(latest)
        names = {m.name for m in self.engine.modules}
        if set(modules) != names:
            raise ValueError(
                f"checkpoint {str(latest)!r} holds modules {sorted(modules)} but this engine has "
                f"{sorted(names)}; point runtime.data_checkpoint_path at a new directory or set "
                "runtime.enable_resume_training to false"
            )
        self.ex.load_state_dicts(modules)
        self.episode = state["episode"]
        self.iterations = dict(state["iterations"])
        if self.stream is not None and state["stream"] is not None:
            self.stream.load_state_dict(state["stream"])
        self.dataset.load_state_dict(state["dataset"])
        self.summaries = list(state["summaries"])
        ckpt.restore_rng(state["rng"])
        print(f"resumed from {latest} (episode {self.episode})", file=sys.stderr)
        return True


def _report_end(summaries: list[dict[str, Any]], *, num_episode: int) -> None:
    """The driver's last episode and reward as its container's termination message
    (``rlhfjob_operator.progress``), for the job's status. No file there (a local
    run: no kubelet mounted one) means nobody reads it: nothing is written."""
    path = Path(os.environ.get(ENV_TERMINATION_LOG) or TERMINATION_LOG)
    if not summaries or not path.is_file():
        return
    try:
        path.write_text(from_summary(summaries[-1], num_episode=num_episode).message())
    except OSError as exc:  # the job's result stands; only its status misses the figures
        print(f"rlhfjob: could not write the termination message {path}: {exc}", file=sys.stderr)


def _default_executor(config: JobConfig) -> Executor:
    """In-process, or over RPC when this process is the driver of a job."""
    if context.role == "driver":
        from rlhfjob.executor.rpc import RpcExecutor

        return RpcExecutor(config, context.peers)
    return LocalExecutor(config)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _progress(*, total: int, initial: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="episodes", unit="ep", file=sys.stderr)


def _write(bar: Any, line: str) -> None:
    if bar is None:
        return
    bar.write(line, file=sys.stdout)


def _format(summary: dict[str, Any], *, total: int | None = None) -> str:
    """One line: the episode, throughput, then every metric at 4 significant digits."""
    parts = []
    if "episode" in summary:
        parts.append(f"episode {summary['episode']}/{total}")
    if "samples_per_s" in summary:
        parts.append(f"{summary['samples_per_s']:.1f} samples/s")
    skip = {"episode", "samples_per_s", "seconds", "samples", "train_steps", "sync_bytes"}
    for key, value in summary.items():
        if key not in skip and isinstance(value, (int, float)):
            parts.append(f"{key} {value:.4g}")
    return "  ".join(parts)
