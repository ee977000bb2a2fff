"""Ready-made engines: GRPO and PPO with the examples' flows, from the job config alone.

``GRPOEngine(config=...)`` and ``PPOEngine(config=...)`` (``RLHFEngine`` is
PPOEngine, as in ChatLearn) build the ready-made modules under the examples'
names, the env, trainer and eval flows, the parameter syncs and, for GRPO,
the replay sample manager (``group_advantages``)::

    GRPO: policy -> reference -> reward; trainer grpo_policy; sync grpo_policy -> policy
    PPO:  policy -> reference, value -> reward; trainers ppo_policy, ppo_value;
          sync ppo_policy -> policy, ppo_value -> value

ChatLearn's form passes the modules in, in that order
(``RLHFEngine(policy, reference, reward, value, ppo_policy, ppo_value,
config=...)``); a module left out (None) is the ready-made one under its
default name. The config's ``models`` sections follow the modules' names.

Prompts: ``set_dataset(prompts)``, else ``runtime.data_path``, else the
policy's ``task`` (``models.<policy>.args.task``) makes ``TRAIN_PROMPTS`` of
them with ``runtime.seed``, as the sort examples do by default. Evaluation
(greedy answers, scored by the reward) is built when the config asks for it
(``eval_episode_interval`` > 0 or ``enable_eval_before_training``) and there
are eval prompts: the constructor's ``eval_dataset``, else
``runtime.eval_data_path``, else ``EVAL_PROMPTS`` of the task's with
``runtime.seed + EVAL_SEED_OFFSET``; with none of those there is no evaluator
(``learn_from_spec``, the YAML-only path, refuses that instead).

``learn_from_spec(name)`` is what the driver runs for ``spec.entrypoint:
{engine: grpo}`` (or ``ppo``): the engine built from the job's own sections,
then ``learn()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rlhfjob.algorithms.grpo import GroupPolicyInference, GRPOTrainer, group_advantages
from rlhfjob.algorithms.ppo import (
    PolicyInference,
    PolicyReference,
    PolicyTrainer,
    RewardInference,
    ValueInference,
    ValueTrainer,
)
from rlhfjob.algorithms.tasks import SortTask
from rlhfjob.engine import Engine, Environment, Evaluator, Trainer
from rlhfjob.executor import Executor
from rlhfjob.module import BaseModule
from rlhfjob_operator.spec import JobConfig

__all__ = [
    "ENGINES",
    "EVAL_PROMPTS",
    "EVAL_SEED_OFFSET",
    "TRAIN_PROMPTS",
    "GRPOEngine",
    "PPOEngine",
    "RLHFEngine",
    "learn_from_spec",
]

# The sort examples' defaults (examples/_report.py): a YAML-only job equals their run.
TRAIN_PROMPTS = 4096
EVAL_PROMPTS = 256
EVAL_SEED_OFFSET = 10_000  # eval prompts drawn apart from the training ones

Config = JobConfig | dict[str, Any] | str | None


class _ReadyMadeEngine(Engine):
    """What both engines share: the eval flow and the prompts a task makes.

    ``task``: the policy's task (None without one), set at construction.
    """

    task: SortTask | None

    def _finish(self, policy: Any, reward: Any, eval_dataset: Sequence[Any] | None) -> None:
        rt = self.config.runtime
        self.task = task = _task_of(policy, self.config)
        if eval_dataset is None and rt.eval_data_path is None and task is not None:
            eval_dataset = task.make_prompts(EVAL_PROMPTS, seed=rt.seed + EVAL_SEED_OFFSET)
        if _wants_eval(self.config) and (eval_dataset is not None or rt.eval_data_path is not None):

            def eval_flow(batch: dict[str, Any]) -> dict[str, Any]:
                return reward.eval_step(policy.eval_step(batch))

            evaluator = Evaluator(eval_flow)
            if eval_dataset is not None:
                evaluator.set_dataset(eval_dataset)
            self.set_evaluator(evaluator)
        if task is not None and rt.data_path is None:
            self.set_dataset(task.make_prompts(TRAIN_PROMPTS, seed=rt.seed))


def _wants_eval(config: JobConfig) -> bool:
    rt = config.runtime
    return rt.eval_episode_interval > 0 or rt.enable_eval_before_training


def _task_of(policy: BaseModule, config: JobConfig) -> SortTask | None:
    """The policy's ``task`` setting; None for a module without one (or without settings).
    A bad ``models.<policy>.args`` fails here, at construction, naming the key."""
    task = getattr(policy.parse_config(config), "task", None)
    return task if isinstance(task, SortTask) else None


class GRPOEngine(_ReadyMadeEngine):
    """GRPO: ``policy`` (GroupPolicyInference) -> ``reference`` -> ``reward``, trained by
    ``grpo_policy`` (GRPOTrainer) on group advantages. Run it with
    ``runtime.stream_data_loader_type: dynamic``: an episode yields ``group_size``
    samples per prompt."""

    def __init__(
        self,
        policy: BaseModule | None = None,
        reference: BaseModule | None = None,
        reward: BaseModule | None = None,
        grpo_policy: BaseModule | None = None,
        *,
        config: Config = None,
        eval_dataset: Sequence[Any] | None = None,
        executor: Executor | None = None,
    ) -> None:
        # Any: a traced model call may take several inputs, which no hook signature says.
        p: Any = GroupPolicyInference("policy") if policy is None else policy
        ref: Any = PolicyReference("reference") if reference is None else reference
        rew: Any = RewardInference("reward") if reward is None else reward
        trainer: Any = GRPOTrainer("grpo_policy") if grpo_policy is None else grpo_policy

        def env_flow(batch: dict[str, Any]) -> dict[str, Any]:
            policy_out = p.forward_step(batch)
            ref_out = ref.forward_step(policy_out)
            return rew.forward_step(policy_out, ref_out)

        def trainer_flow(batch: list[dict[str, Any]]) -> None:
            trainer.train_step(batch)

        super().__init__(
            Environment(env_flow), Trainer(trainer_flow), config=config, executor=executor
        )
        self.set_parameter_sync(trainer, p)
        self.set_replay_sample_manager(group_advantages)
        self._finish(p, rew, eval_dataset)


class PPOEngine(_ReadyMadeEngine):
    """PPO: ``policy`` -> ``reference``, ``value`` -> ``reward`` (per-token rewards and
    GAE advantages), trained by ``ppo_policy`` and ``ppo_value``; each trainer syncs
    into its inference twin."""

    def __init__(
        self,
        policy: BaseModule | None = None,
        reference: BaseModule | None = None,
        reward: BaseModule | None = None,
        value: BaseModule | None = None,
        ppo_policy: BaseModule | None = None,
        ppo_value: BaseModule | None = None,
        *,
        config: Config = None,
        eval_dataset: Sequence[Any] | None = None,
        executor: Executor | None = None,
    ) -> None:
        # Any: a traced model call may take several inputs, which no hook signature says.
        p: Any = PolicyInference("policy") if policy is None else policy
        ref: Any = PolicyReference("reference") if reference is None else reference
        rew: Any = RewardInference("reward") if reward is None else reward
        val: Any = ValueInference("value") if value is None else value
        actor: Any = PolicyTrainer("ppo_policy") if ppo_policy is None else ppo_policy
        critic: Any = ValueTrainer("ppo_value") if ppo_value is None else ppo_value

        def env_flow(batch: dict[str, Any]) -> dict[str, Any]:
            policy_out = p.forward_step(batch)
            ref_out = ref.forward_step(policy_out)
            value_out = val.forward_step(policy_out)
            return rew.forward_step(policy_out, ref_out, value_out)

        def trainer_flow(batch: list[dict[str, Any]]) -> None:
            actor.train_step(batch)
            critic.train_step(batch)

        super().__init__(
            Environment(env_flow), Trainer(trainer_flow), config=config, executor=executor
        )
        self.set_parameter_sync(actor, p).set_parameter_sync(critic, val)
        self._finish(p, rew, eval_dataset)


RLHFEngine = PPOEngine  # ChatLearn's name for it

# spec.entrypoint.engine's values (rlhfjob_operator.spec.Entrypoint) and their engines.
ENGINES: dict[str, type[_ReadyMadeEngine]] = {"grpo": GRPOEngine, "ppo": PPOEngine}


def learn_from_spec(name: str, *, progress: bool = True) -> list[dict[str, Any]]:
    """Build engine ``name`` from the job's ``runtime`` and ``models`` (the job under
    ``rlhfjob run`` or a pod; the defaults elsewhere) and ``learn()``.

    ValueError, before any episode, when there is nothing to train on (no
    ``runtime.data_path`` and no task for the policy) or the config asks for
    evaluation that has no prompts (no ``runtime.eval_data_path`` and no task):
    with no Python file of the user's, no ``set_dataset`` can supply them.
    """
    engine = ENGINES[name]()
    rt = engine.config.runtime
    if rt.data_path is None and engine.task is None:
        raise ValueError(
            f"spec.entrypoint.engine {name!r} has no prompts: set runtime.data_path to a prompt "
            "file, or models.policy.args.task to a task that makes them"
        )
    if _wants_eval(engine.config) and engine.evaluator is None:
        raise ValueError(
            f"spec.entrypoint.engine {name!r} has no eval prompts for runtime."
            "eval_episode_interval or enable_eval_before_training: set runtime.eval_data_path "
            "(or models.policy.args.task), or turn evaluation off"
        )
    return engine.learn(progress=progress)
