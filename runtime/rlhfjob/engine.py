"""Engine, Environment, Trainer, Evaluator: the episode loop of ChatLearn's Custom Flow API.

One episode:

1. ``before_episode`` on every module;
2. take ``sample_per_episode / num_inference_per_prompt`` prompts from the stream
   (continuing across episodes, wrapping and reshuffling at the end of the
   dataset), each ``num_inference_per_prompt`` times (default once), run the env
   flow over them in ``generation_batch_size`` batches, and collect the
   outputs in the StreamDataset;
3. the replay sample manager (if set) rewrites the samples from the last
   ``max_replay_episode`` episodes;
4. run the trainer flow ``num_training_epoch`` times over the samples, one
   call per global batch with its micro-batches, shuffled;
5. parameter sync of every pair whose trainer's ``sync_frequency`` divides
   the episode number (1-based);
6. every ``save_episode_interval``: ``save_checkpoint(train_iteration)`` on
   every module; every ``eval_episode_interval``: the evaluation; then
   ``after_episode`` (ChatLearn's order); the checkpoint is written last.

Fresh runs also sync every pair once before the first episode, so inference
models start from their trainers' weights. With ``runtime.max_staleness`` k >= 1,
step 2 of episode e+k is submitted after step 1 of episode e, so it runs while
episode e trains and syncs (:mod:`rlhfjob.ahead`).

Here: the Engine (building, validation, ``learn()``); the flows are
:mod:`rlhfjob.components`, the loop :mod:`rlhfjob.episodes`, saving and resuming
:mod:`rlhfjob.resume`.
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from rlhfjob import context, timing
from rlhfjob.components import Environment, Evaluator, Trainer
from rlhfjob.data import EpisodeReplayBuffer
from rlhfjob.episodes import EpisodeRun
from rlhfjob.executor import Executor, LocalExecutor
from rlhfjob.module import BaseModule
from rlhfjob.text import read_prompt_file
from rlhfjob_operator.contract import ENV_TERMINATION_LOG, TERMINATION_LOG
from rlhfjob_operator.progress import from_summary
from rlhfjob_operator.spec import JobConfig, load_job_config

__all__ = ["Engine", "Environment", "EvalEngine", "Evaluator", "Trainer"]

ReplayManager = Callable[[list[EpisodeReplayBuffer]], list[Any]]
T = TypeVar("T")


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
        """The prompts of the env flow; taken ``sample_per_episode`` copies at a time
        (``num_inference_per_prompt`` of each), wrapping.
        Without it, ``learn()`` reads ``runtime.data_path`` (``rlhfjob.text``)."""
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

        The buffers are the last ``runtime.max_replay_episode`` episodes (this one
        included; -1: all), oldest first; GRPO computes group advantages here.
        Episodes before ``runtime.replay_episode_offset`` train on their own samples
        without it. ``max_replay_episode: 0`` (the default) disables replay, as in
        ChatLearn, so ``learn()`` refuses a manager with it rather than ignore it.
        """
        if not callable(fn):
            raise ValueError("set_replay_sample_manager takes a function")
        self._replay_manager = fn
        return self

    # ChatLearn's other spellings of the same setter: v1.0.x's "relay", and the ``_fn``
    # form its docs and tests use.
    set_replay_sample_fn = set_replay_sample_manager
    set_relay_sample_manager = set_replay_sample_manager
    set_relay_sample_fn = set_replay_sample_manager

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
        if env is not None and self.trainer is not None and not env.graph.outputs:
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

    def _read_prompt_files(self) -> None:
        """``runtime.data_path`` (``eval_data_path``) as the env (eval) flow's prompts where
        no ``set_dataset`` gave them; read on the driver, so a bad file fails the job before
        any worker starts. ValueError when a flow has neither, or the file is refused
        (``rlhfjob.text.read_prompt_file``: the error names the key and the path)."""
        rt = self.config.runtime
        if self.environment is not None and self._datasets is None:
            if rt.data_path is None:
                raise ValueError(
                    "the environment has no prompts; call engine.set_dataset(prompts) or set "
                    "runtime.data_path to a prompt file"
                )
            key = "runtime.data_path"
            self.set_dataset(read_prompt_file(rt.data_path, key=key, prompt_key=rt.prompt_key))
        if self.evaluator is not None and self.evaluator.dataset is None:
            if rt.eval_data_path is None:
                raise ValueError(
                    "the evaluator has no dataset; call Evaluator(...).set_dataset(data) or set "
                    "runtime.eval_data_path to a prompt file"
                )
            self.evaluator.set_dataset(
                read_prompt_file(
                    rt.eval_data_path, key="runtime.eval_data_path", prompt_key=rt.prompt_key
                )
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
        timing.mark("learn() called")
        if self.environment is None and self.trainer is None and self.evaluator is None:
            raise ValueError("the engine has no environment, trainer or evaluator to run")
        if self._replay_manager is not None and self.config.runtime.max_replay_episode == 0:
            raise ValueError(
                "a replay sample manager is set but runtime.max_replay_episode is 0, which "
                "disables replay (ChatLearn's meaning), so the manager would never run; set "
                "runtime.max_replay_episode to 1 or more (-1 keeps every episode)"
            )
        summaries = self._run(lambda run: run.learn(progress=progress))
        if context.role == "driver":
            _report_end(summaries, num_episode=self.config.runtime.num_episode)
        return summaries

    def eval(self, cur_iter: int | None = None, train_iteration: int | None = None) -> Any:
        """ChatLearn's ``engine.eval()``: run the eval flow once over its dataset and return
        what ``post_process(results, eval_info)`` returns; ``eval_info`` has
        ``episode_iteration`` and ``train_iteration`` only where they are given. No
        episode runs and no checkpoint is read or written. Like ``learn()``, it ends the
        executor when done: under ``rlhfjob run`` an entrypoint calls one of them, once."""
        if context.role == "worker":
            raise context.StopEntrypoint
        if self.evaluator is None:
            raise ValueError("the engine has no evaluator; pass Evaluator(eval_flow) to it")
        info = {"episode_iteration": cur_iter, "train_iteration": train_iteration}
        return self._run(
            lambda run: run.post_processed({k: v for k, v in info.items() if v is not None})
        )

    def stop(self) -> None:
        """ChatLearn's ``engine.stop()``: there is nothing left to stop here, since
        ``eval()`` and ``learn()`` end their workers before they return."""

    def _run(self, body: Callable[[EpisodeRun], T]) -> T:
        """Check, set up the executor, run ``body`` on an EpisodeRun, shut down."""
        self._check_config_names()
        for module in self.modules:  # a bad models.<name>.args key fails here, before any worker
            module.parse_config(self.config)
        self._read_prompt_files()
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
            timing.mark("executor set up")
            return body(EpisodeRun(self, executor))
        finally:
            executor.shutdown()


class EvalEngine(Engine):
    """ChatLearn's ``EvalEngine(eval_flow)``: an engine with only an evaluator, whose
    ``set_dataset`` sets the evaluator's data; run it with ``eval()``.

    ``eval_flow`` is a flow function or an ``Evaluator``.
    """

    def __init__(
        self,
        eval_flow: Callable[[Any], Any] | Evaluator,
        *,
        config: JobConfig | dict[str, Any] | str | None = None,
        executor: Executor | None = None,
    ) -> None:
        evaluator = eval_flow if isinstance(eval_flow, Evaluator) else Evaluator(eval_flow)
        super().__init__(evaluator=evaluator, config=config, executor=executor)

    def set_dataset(self, dataset: Sequence[Any]) -> EvalEngine:
        """The evaluator's data (what ``Evaluator.set_dataset`` sets)."""
        assert self.evaluator is not None
        self.evaluator.set_dataset(dataset)
        return self


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
