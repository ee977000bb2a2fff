"""BaseModule: one model of a flow, with ChatLearn's hooks and signatures.

A subclass builds its model in ``setup()`` and implements the steps its flows
call. Any public method called inside a flow is a model call: during tracing
the call is recorded instead of run (see ``rlhfjob.flow``).

Data is a dict whose values have the batch as first dimension (tensors or
lists). ``forward_step(data, iteration)`` and ``eval_step(data)`` return such a
dict (or None); ``train_step(data, iteration)`` gets the list of micro-batch
dicts of one global batch. A hook written without the ``iteration`` parameter
is called without it.

A module that sets ``self.model`` (a ``torch.nn.Module``) and optionally
``self.optimizer`` is checkpointed and parameter-synced with no extra code;
override ``state_dict``/``load_state_dict`` to save more. A trainer with
several replicas (``num_replica``) is data parallel: its gradients are
averaged over ``self.replica_group`` before ``optimizer.step()``, or, when it
calls ``average_gradients()`` after its last backward, right there (so that
clipping sees the average, as under DDP); a model sharded with FSDP2
(``rlhfjob.sharding``) averages them in backward itself.

A module with a ``config_class`` (the ready-made ones: a settings dataclass)
gets ``models.<name>.args`` parsed into ``self.config``, and the Engine
validates it on the driver before any worker starts; without one (a user's
module, as in ChatLearn) ``model_args`` is the free dict.
"""

from __future__ import annotations

import inspect
import zlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from rlhfjob import batching, tracing
from rlhfjob.checkpoint import RNGStream

if TYPE_CHECKING:
    import torch

    from rlhfjob_operator.spec import JobConfig, ModelSpec, RuntimeSpec

__all__ = ["BaseModule"]

# Methods of BaseModule itself that are never model calls, even inside a flow.
_NOT_MODEL_CALLS = frozenset(
    {
        "setup",
        "build_dataset",
        "before_episode",
        "after_episode",
        "get_and_clear_metrics",
        "save_checkpoint",
        "state_dict",
        "load_state_dict",
        "named_parameters_to_sync",
        "average_gradients",
        "bind",
        "parse_config",
        "call_hook",
        "run_hook",
    }
)


class ArgsParser(Protocol):
    """What ``config_class`` is: ``from_args(name, args)`` returns the parsed settings, or
    raises ValueError naming ``models.<name>.args.<key>``."""

    def from_args(self, name: str, args: Mapping[str, Any]) -> Any: ...


class BaseModule:
    """A named model. ``name`` keys its ``models.<name>`` config section."""

    config_class: ClassVar[ArgsParser | None] = None
    config: Any  # set by bind() through config_class; absent when there is none

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a module needs a non-empty string name, got {name!r}")
        self.name = name
        self.model: torch.nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._config: JobConfig | None = None
        self.replica_id = 0
        # The process group of this model's data-parallel replicas; None with one replica.
        self.replica_group: Any = None
        # Set by a multi-process executor for a replicated, unsharded trainer.
        self.gradient_averager: Callable[[], None] | None = None
        self.rng: RNGStream | None = None

    # --- configuration, bound by the Engine before setup() -----------------

    def bind(self, config: JobConfig, *, replica_id: int = 0, replica_group: Any = None) -> None:
        """Attach the job config and seed this module's RNG stream; called before ``setup()``.

        Executors run every hook of the module inside ``self.rng`` so its random
        draws are its own, whichever process it lives in. ``replica_group``: the
        process group of this trainer's data-parallel replicas (None in process
        and with one replica).
        """
        self._config = config
        self.replica_id = replica_id
        self.replica_group = replica_group
        if self.config_class is not None:
            self.config = self.parse_config(config)
        key = f"{config.runtime.seed}/{self.name}/{replica_id}".encode()
        self.rng = RNGStream(zlib.crc32(key))

    def parse_config(self, config: JobConfig) -> Any:
        """This module's ``models.<name>.args`` parsed by ``config_class`` (None without one).

        ValueError names the key and what is allowed; the Engine calls this on the driver
        before any worker starts, so a typo fails the job there.
        """
        if self.config_class is None:
            return None
        return self.config_class.from_args(self.name, config.model(self.name).args)

    @property
    def runtime_args(self) -> RuntimeSpec:
        """The job's ``runtime`` section."""
        if self._config is None:
            raise RuntimeError(f"module {self.name!r} is not bound to an Engine yet")
        return self._config.runtime

    @property
    def module_args(self) -> ModelSpec:
        """This model's ``models.<name>`` section (defaults when absent)."""
        if self._config is None:
            raise RuntimeError(f"module {self.name!r} is not bound to an Engine yet")
        return self._config.model(self.name)

    @property
    def model_args(self) -> dict[str, Any]:
        """The raw ``models.<name>.args`` dict; a module with a ``config_class`` reads
        ``self.config`` instead."""
        return self.module_args.args

    @property
    def trainable(self) -> bool:
        return self.module_args.trainable

    # --- hooks, as ChatLearn calls them -------------------------------------

    def setup(self) -> None:
        """Build the model (and optimizer) on the worker. Default: nothing."""

    def build_dataset(self, prompts: list[Any], is_eval: bool = False) -> list[Any]:
        """Turn raw prompts into samples; called on the first model of a flow."""
        return prompts

    def forward_step(self, data: dict[str, Any], iteration: int) -> dict[str, Any] | None:
        raise NotImplementedError(f"{type(self).__name__} does not implement forward_step")

    def train_step(self, data: list[dict[str, Any]], iteration: int) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not implement train_step")

    def eval_step(self, data: dict[str, Any]) -> dict[str, Any] | None:
        raise NotImplementedError(f"{type(self).__name__} does not implement eval_step")

    def before_episode(self) -> None:
        """Called on every module at the start of each episode."""

    def after_episode(self) -> None:
        """Called on every module at the end of each episode."""

    def get_and_clear_metrics(self) -> dict[str, float]:
        """Scalar metrics gathered since the last call; shown per episode."""
        return {}

    def save_checkpoint(self, iteration: int) -> None:
        """User hook, on replica 0, of an episode that checkpoints: before its evaluation
        and ``after_episode``, as ChatLearn's; ``iteration`` is the train steps so far
        (ChatLearn's ``trainer.iteration``; 0 without a trainer). The engine takes
        ``state_dict`` after ``after_episode``."""

    # --- state: checkpointing and parameter sync ---------------------------

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint holds for this module: model and optimizer state.

        A sharded model's are gathered whole, so this is then collective: every
        replica calls it, in the same order.
        """
        from rlhfjob import sharding

        state: dict[str, Any] = {}
        if sharding.is_sharded(self.model):
            assert self.model is not None
            model, optimizer = sharding.full_state(self.model, self.optimizer)
            return {"model": model} | ({} if optimizer is None else {"optimizer": optimizer})
        if self.model is not None:
            state["model"] = self.model.state_dict()
        if self.optimizer is not None:
            state["optimizer"] = self.optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from rlhfjob import sharding

        if sharding.is_sharded(self.model):
            assert self.model is not None
            sharding.load_full_state(
                self.model,
                self.optimizer,
                model_state=state.get("model"),
                optimizer_state=state.get("optimizer"),
            )
            return
        if self.model is not None and "model" in state:
            self.model.load_state_dict(state["model"])
        if self.optimizer is not None and "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])

    def named_parameters_to_sync(self) -> dict[str, torch.Tensor]:
        """Tensors that parameter sync copies from a trainer to its inference twin."""
        if self.model is None:
            raise ValueError(
                f"module {self.name!r} has no self.model, so its parameters cannot be synced; "
                "set self.model in setup() or override named_parameters_to_sync()"
            )
        return dict(self.model.named_parameters())

    def average_gradients(self) -> None:
        """Average the gradients over the data-parallel replicas now, once per optimizer step.

        A trainer calls it after its last ``backward()`` and before clipping, so the
        clip sees the averaged gradient as under DDP; one that does not gets them
        averaged just before ``optimizer.step()`` (after its clip). A no-op in
        process, with one replica, and for a sharded model.
        """
        if self.gradient_averager is not None:
            self.gradient_averager()

    def call_hook(self, method: str, data: Any, iteration: int | None) -> Any:
        """Call ``method`` in this module's RNG stream, with ``iteration`` only if it takes one.

        A dict batch larger than this model's ``generation_batch_size`` (when its
        section sets one) is cut into pieces of that size, each called in turn with
        the same ``iteration``, and the outputs joined (``rlhfjob.batching``), as
        ChatLearn does; a train step's list of micro-batches is never cut.
        """
        fn = getattr(self, method)
        takes = iteration is not None and _takes_iteration(fn)
        size = self.module_args.generation_batch_size if self._config is not None else None
        n = batching.batch_size(data) if size is not None and isinstance(data, dict) else None
        if size is None or n is None or n <= size:
            return self.run_hook(fn, *((data, iteration) if takes else (data,)))
        outputs = [
            self.run_hook(fn, *((piece, iteration) if takes else (piece,)))
            for piece in batching.pieces(data, size)
        ]
        return batching.concat(outputs, f"{self.name}.{method}")

    def run_hook(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(*args)`` inside this module's RNG stream (plainly when unbound)."""
        if self.rng is None:
            return fn(*args)
        with self.rng:
            return fn(*args)

    # --- tracing -----------------------------------------------------------

    def __getattribute__(self, attr: str) -> Any:
        value = object.__getattribute__(self, attr)
        recorder = tracing.active()
        if (
            recorder is not None
            and not attr.startswith("_")
            and attr not in _NOT_MODEL_CALLS
            and inspect.ismethod(value)
        ):
            return recorder.record(self, attr)
        return value

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def _takes_iteration(fn: Any) -> bool:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return True
    positional = [
        p
        for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
    ]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in positional)
