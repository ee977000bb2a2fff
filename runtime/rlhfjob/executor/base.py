"""The interface between the Engine's episode loop and wherever models run."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any, Protocol

from rlhfjob.executor.protocol import Joined, Row
from rlhfjob.flow import Node
from rlhfjob.module import BaseModule

__all__ = ["Executor", "join_samples"]


class Executor(Protocol):
    """Runs module hooks and model calls; results may be remote references.

    ``call`` returns a handle to a node's output (the value itself in-process);
    ``fetch`` turns a handle into data on the caller's side, and is used only
    where the driver really needs values (evaluation results, the training
    samples of the in-process StreamDataset).
    """

    def setup(
        self,
        modules: Sequence[BaseModule],
        *,
        sync_pairs: Sequence[tuple[BaseModule, BaseModule]] = (),
    ) -> None:
        """Bind and set up every module where it lives; prepare each sync pair's transport."""
        ...

    def build_dataset(
        self, module: BaseModule, prompts: list[Any], *, is_eval: bool
    ) -> list[Any]: ...

    def call(self, node: Node, inputs: Sequence[Any], *, iteration: int | None) -> Any: ...

    def fetch(self, handle: Any) -> Any: ...

    def samples(self, handle: Any, *, label: str) -> list[Any]:
        """The per-sample entries of an env-flow output: dicts, or row references
        (``join_samples`` joins those of several outputs)."""
        ...

    def materialize(self, samples: list[Any]) -> list[Any]:
        """Samples as per-sample dicts on the driver (for a replay sample manager)."""
        ...

    def begin(self, scope: int) -> None:
        """Calls issued from now on belong to ``scope`` (the driver's episode number), so
        that ``wait`` and ``release`` can take one episode's calls while a later
        episode's env flow is still in flight (``runtime.max_staleness``)."""
        ...

    def wait(self, scope: int | None = None) -> None:
        """Return once every call of ``scope`` (of every scope when None) issued so far
        has finished (raising the first failure)."""
        ...

    def done(self, scope: int) -> bool:
        """Whether every call of ``scope`` issued so far has finished, without waiting
        (``wait`` raises any failure)."""
        ...

    def release(self, scope: int | None = None) -> None:
        """Wait for, then drop every stored output of the calls of ``scope`` (of every
        scope when None)."""
        ...

    def hook(self, name: str) -> None:
        """Call a no-argument hook (``before_episode``, ``after_episode``) on every module."""
        ...

    def metrics(self, modules: Collection[str] | None = None) -> dict[str, dict[str, float]]:
        """Each of ``modules``' metrics (every module's when None) since the last ask,
        cleared; replicas' values averaged."""
        ...

    def metrics_later(
        self, modules: Collection[str] | None = None
    ) -> Callable[[], dict[str, dict[str, float]]]:
        """``metrics(modules)`` taken after every call issued so far and before any issued
        later, without waiting: the returned function waits for it."""
        ...

    def step_seconds(self) -> list[tuple[str, str, float]]:
        """Model calls finished since the last call, as (module, method, seconds run)."""
        ...

    def sync(self, src: BaseModule, dst: BaseModule) -> int:
        """Copy ``src``'s parameters into ``dst``; returns the bytes moved (in buckets of
        ``runtime.coalesced_buffer_mb`` across workers, sized at setup)."""
        ...

    def save_hooks(self, *, iteration: int) -> None:
        """Call ``save_checkpoint(iteration)`` on every module (replica 0 of each)."""
        ...

    def state_dicts(self) -> dict[str, dict[str, Any]]:
        """Every module's checkpoint state (replica 0's, with every replica's RNG)."""
        ...

    def load_state_dicts(self, states: dict[str, dict[str, Any]]) -> None: ...

    def shutdown(self) -> None: ...


def join_samples(per_output: Sequence[list[Any]], labels: Sequence[str]) -> list[Any]:
    """One entry per sample from the entries of each returned output of one env-flow
    batch (``labels`` name the calls): dicts merge in order (a later output's key
    wins); row references become a ``Joined``, merged when pulled.

    Raises ValueError when the outputs disagree on how many samples the batch has.
    """
    if len(per_output) == 1:
        return per_output[0]
    counts = [len(entries) for entries in per_output]
    if len(set(counts)) > 1:
        listed = ", ".join(f"{label} {n}" for label, n in zip(labels, counts, strict=True))
        raise ValueError(
            f"the env flow returns {len(labels)} outputs that disagree on the batch's "
            f"samples ({listed}); each returned call must return one row per sample"
        )
    joined: list[Any] = []
    for parts in zip(*per_output, strict=True):
        if all(isinstance(part, Row) for part in parts):
            joined.append(Joined(tuple(parts)))
        else:
            merged: dict[str, Any] = {}
            for part in parts:
                merged.update(part)
            joined.append(merged)
    return joined
