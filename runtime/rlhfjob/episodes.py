"""One ``learn()``: the episode loop, its env/trainer/eval passes and its console lines.

The order of an episode is the one :mod:`rlhfjob.engine` describes; saving and
resuming the run's state is :mod:`rlhfjob.resume`.
"""

from __future__ import annotations

import math
import sys
import time
from typing import TYPE_CHECKING, Any

from rlhfjob import context, resume, timing
from rlhfjob import metrics as prom
from rlhfjob.ahead import Generation, ledger_entry, waits
from rlhfjob.comm import stopping
from rlhfjob.components import metrics_of
from rlhfjob.data import PromptStream, StreamDataset, collate
from rlhfjob.executor import Executor, join_samples
from rlhfjob.flow import FlowGraph, run_graph

if TYPE_CHECKING:
    from rlhfjob.engine import Engine

__all__ = ["EpisodeRun"]

EVAL_SCOPE = 0  # the executor scope of evaluation calls; episodes' scopes are their numbers


class EpisodeRun:
    """The state of one ``learn()``: positions, counters, the stream and history."""

    def __init__(self, engine: Engine, executor: Executor) -> None:
        self.engine = engine
        self.ex = executor
        self.rt = engine.config.runtime
        self.episode = 0  # completed episodes
        self.iterations: dict[str, int] = {}
        self.summaries: list[dict[str, Any]] = []
        self.stop_why: str | None = None  # a SIGTERM somewhere in the gang (comm.stopping)
        self.saved_episode: int | None = None  # the newest checkpoint this run saved
        # Generation ahead of training (rlhfjob.ahead): the env flows submitted and not yet
        # trained on, by episode; the trainer's weight version; the prompt ledger.
        self.ahead: dict[int, Generation] = {}
        self.version = 0  # of the weights the env flow generates with (rlhfjob.ahead)
        self.ledger: dict[int, dict[str, Any]] = {}
        # Modules of the env flow that no trainer flow calls: their metrics are asked right
        # after each env flow, so they count in the episode that trains on it.
        env, trainer = engine.environment, engine.trainer
        self.env_only = {m.name for m in env.modules} if env is not None else set()
        self.env_only -= {m.name for m in trainer.modules} if trainer is not None else set()
        self.stream: PromptStream | None = None
        if engine.environment is not None and engine._datasets is not None:
            first = engine.environment.graph.entry_modules[0]
            datasets = [
                executor.build_dataset(first, data, is_eval=False) for data in engine._datasets
            ]
            self.stream = PromptStream(
                datasets, seed=self.rt.seed, shuffle=self.rt.data_shuffle, ratio=self.rt.data_ratio
            )
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
            replay_episode_offset=self.rt.replay_episode_offset,
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
        resumed = resume.resume(self)
        if not resumed:
            for src, dst in self.engine._sync_pairs:
                self.ex.sync(src, dst)
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
                metrics = self.evaluate(before_training=True)
                _write(bar, "before training  " + _format(metrics))
            timing.mark(f"episode {self.episode + 1} begins")
            while self.episode < self.rt.num_episode:
                summary = self.run_episode()
                self.summaries.append(summary)
                if served is not None:
                    served.record_episode(summary, dataset_samples=len(self.dataset.samples))
                    served.observe_steps(self.ex.step_seconds())
                    if self.saved_episode is not None:
                        served.record_checkpoint(self.saved_episode)
                _write(bar, _format(summary, total=self.rt.num_episode))
                if bar is not None:
                    bar.update(1)
                if self.stop_why is not None:
                    saved = self.rt.data_checkpoint_path is not None
                    raise stopping.Disrupted(self.stop_why, episode=self.episode, saved=saved)
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
        env_metrics: dict[str, dict[str, float]] = {}
        samples: list[Any] = []
        generating = collecting = 0.0
        generation: Generation | None = None
        if self.engine.environment is not None:
            generating = self._submit_ahead(number)
            generation = self.ahead.pop(number)
            began = time.perf_counter()
            samples = self._collect(generation)
            collecting = time.perf_counter() - began
            env_metrics = generation.metrics_now()
        summary["samples"] = len(samples)
        if self.engine.trainer is not None:
            if generation is not None:
                self._record_training(number, generation, summary)
            manager = self.engine._replay_manager
            if manager is not None:
                samples = self.ex.materialize(samples)
            # The replay buffers' episode_id is ChatLearn's: 0-based.
            self.dataset.set_episode(number - 1, samples, manager)
            self.ex.begin(number)
            # The env flows in flight may be done already (in process: always).
            idle = all(self.ex.done(e) for e in self.ahead)
            generated = time.perf_counter() if idle else None
            summary["train_steps"] = self.train()
            # Training done everywhere (what follows times the sync alone), and the env
            # flows in flight, whose workers the sync may need; each end is timed.
            trained, generated = self._finish(number, generated)
            summary.update(
                waits(
                    generating=generating,
                    collecting=collecting,
                    trained=trained,
                    generated=generated,
                )
            )
            sync_start, synced = time.perf_counter(), 0
            for src, dst in self.engine._sync_pairs:
                if number % self.engine.config.model(src.name).sync_frequency == 0:
                    synced += self.ex.sync(src, dst)
            if synced:
                summary["sync_seconds"] = time.perf_counter() - sync_start
                summary["sync_bytes"] = synced
            if synced or not self.engine._sync_pairs:  # the weights later flows generate with
                self.version = number
        self.ex.release(number)
        # ChatLearn's order, which a module sees: save_checkpoint, then the evaluation,
        # then after_episode. The checkpoint itself is written last, once this episode's
        # summary and RNG states are final, so a resumed run equals an uninterrupted one.
        save = self.rt.save_episode_interval
        periodic = save is not None and save > 0 and number % save == 0
        if periodic:
            self.ex.save_hooks(iteration=self.train_iteration())
        interval = self.rt.eval_episode_interval
        if self.engine.evaluator is not None and interval and number % interval == 0:
            summary.update(self.evaluate())
        self.ex.hook("after_episode")
        others = [m.name for m in self.engine.modules if m.name not in self.env_only]
        metrics = {**env_metrics, **(self.ex.metrics(others) if others else {})}
        for name in [m.name for m in self.engine.modules if m.name in metrics]:
            for key, value in metrics[name].items():
                summary[f"{name}/{key}"] = value
        elapsed = time.perf_counter() - start
        summary["seconds"] = elapsed
        summary["samples_per_s"] = len(samples) / elapsed if elapsed > 0 else math.inf
        self.episode = number
        # The safe point: every call of the episode is done and nothing of the next began
        # (but the env flows ahead, which a checkpoint keeps materialised).
        if number < self.rt.num_episode:
            self.stop_why = stopping.requested()
        emergency = self.stop_why is not None and self.rt.data_checkpoint_path is not None
        if emergency and not periodic:
            self.ex.save_hooks(iteration=self.train_iteration())
        if periodic or emergency:
            self._materialize_ahead()
            resume.save(self, summary)
            self.saved_episode = number
        return summary

    # --- generation ahead (rlhfjob.ahead) ----------------------------------------

    def _submit_ahead(self, number: int) -> float:
        """Submit the env flows of every episode up to ``number + max_staleness`` not yet
        submitted; returns the seconds it took (in process, the flows run then)."""
        began = time.perf_counter()
        last = min(number + self.rt.max_staleness, self.rt.num_episode)
        for episode in range(max([number - 1, *self.ahead]) + 1, last + 1):
            self.ahead[episode] = self._generate(episode)
            copies = self.rt.num_inference_per_prompt
            self.ledger[episode] = ledger_entry(self.ahead[episode], copies=copies)
        return time.perf_counter() - began

    def _record_training(self, number: int, generation: Generation, summary: dict) -> None:
        """The ledger's and the summary's record of training episode ``number``: with the
        trainer's weights of version ``number - 1`` on ``generation``'s samples."""
        self.ledger[number]["trained_with"] = number - 1
        if self.rt.max_staleness > 0:
            staleness = number - 1 - generation.version
            summary["staleness_mean"] = float(staleness)  # one version per env flow
            summary["staleness_max"] = staleness

    def _finish(self, number: int, generated: float | None) -> tuple[float, float]:
        """Wait for episode ``number``'s training and for the env flows in flight; returns
        when each finished (the driver's clock, within a millisecond). ``generated``: when
        the flows in flight were seen done already (None: not yet)."""
        trained = None
        while trained is None or generated is None:
            now = time.perf_counter()
            if trained is None and self.ex.done(number):
                trained = now
            if generated is None and all(self.ex.done(e) for e in self.ahead):
                generated = now
            if trained is None or generated is None:
                time.sleep(0.001)
        self.ex.wait(number)  # raise a failure of training
        for episode in self.ahead:
            self.ex.wait(episode)
        return trained, generated

    def _materialize_ahead(self) -> None:
        """Take the samples and metrics of the env flows in flight onto the driver, for a
        checkpoint that resumes them instead of generating them again."""
        for generation in self.ahead.values():
            if generation.samples is None:
                generation.samples = self.ex.materialize(self._collect(generation))
            generation.metrics_now()

    def _generate(self, episode: int) -> Generation:
        """Submit episode ``episode``'s env flow (its calls in scope ``episode``), and the
        ask for its modules' metrics after it."""
        assert self.engine.environment is not None and self.stream is not None
        graph = self.engine.environment.graph
        assert graph.outputs or self.engine.trainer is None
        self.ex.begin(episode)
        count = self.rt.sample_per_episode // self.rt.num_inference_per_prompt
        ids = self.stream.prompt_ids(self.stream.positions(count))
        prompts = _repeated(
            self.stream.take(count),
            times=self.rt.num_inference_per_prompt,
            whole=self.rt.data_rerank,
        )
        size = self.rt.generation_batch_size
        batches = []
        for start in range(0, len(prompts), size):
            results = self._run(graph, collate(prompts[start : start + size]), iterate=True)
            batches.append([results[i] for i in graph.outputs])
        return Generation(
            episode=episode,
            version=self.version,
            prompts=ids,
            handles=batches,
            labels=[graph.nodes[i].label for i in graph.outputs],
            metrics=self.ex.metrics_later(self.env_only),
        )

    def _collect(self, generation: Generation) -> list[Any]:
        """A generation's samples in the order its calls were issued (waiting for them)."""
        if generation.samples is not None:
            return generation.samples
        samples: list[Any] = []
        for handles in generation.handles:
            pairs = zip(handles, generation.labels, strict=True)
            per_output = [self.ex.samples(handle, label=label) for handle, label in pairs]
            if per_output:
                samples.extend(join_samples(per_output, generation.labels))
        return samples

    def train(self) -> int:
        assert self.engine.trainer is not None
        steps = 0
        for epoch in range(self.rt.num_training_epoch):
            for batch in self.dataset.global_batches(episode=self.episode + 1, epoch=epoch):
                self._run(self.engine.trainer.graph, batch, iterate=True)
                steps += 1
        return steps

    def evaluate(self, *, before_training: bool = False) -> dict[str, float]:
        """One evaluation in the episode loop, as ``eval/<key>`` metrics: ``eval_info`` has
        ``episode_iteration`` (the 0-based episode just trained; -1 before training)
        and ``train_iteration`` (train steps so far), as ChatLearn's."""
        info = {
            "episode_iteration": -1 if before_training else self.episode,
            "train_iteration": self.train_iteration(),
        }
        return {f"eval/{k}": v for k, v in metrics_of(self.post_processed(info)).items()}

    def train_iteration(self) -> int:
        """Train steps so far (ChatLearn's ``trainer.iteration``); 0 without a trainer."""
        trainer = self.engine.trainer
        return self.iterations.get(trainer.graph.nodes[0].label, 0) if trainer else 0

    def post_processed(self, eval_info: dict[str, Any]) -> Any:
        """Run the eval flow over its dataset; what ``post_process(results, eval_info)``
        returns, ``results`` mapping each returned model's name to its batches."""
        evaluator = self.engine.evaluator
        assert evaluator is not None and self.eval_data is not None
        graph = evaluator.graph
        size = self.rt.generation_batch_size
        handles: list[tuple[str, Any]] = []
        self.ex.begin(EVAL_SCOPE)
        for start in range(0, len(self.eval_data), size):
            results = self._run(graph, collate(self.eval_data[start : start + size]), iterate=True)
            handles.extend((graph.nodes[i].module.name, results[i]) for i in graph.outputs)
        outputs: dict[str, list[Any]] = {}
        for name, handle in handles:
            outputs.setdefault(name, []).append(self.ex.fetch(handle))
        self.ex.release(EVAL_SCOPE)
        return evaluator.post_process(outputs, eval_info)


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


def _repeated(prompts: list[Any], *, times: int, whole: bool) -> list[Any]:
    """Each prompt ``times`` times, as ChatLearn's ``MultiDatasetSampler.repeat``: the
    list as a whole (a b a b) with ``data_rerank``, else each in place (a a b b)."""
    if whole:
        return prompts * times
    return [p for p in prompts for _ in range(times)]
