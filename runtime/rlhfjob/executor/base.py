"""The interface between the Engine's episode loop and wherever models run."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from rlhfjob.flow import Node
from rlhfjob.module import BaseModule


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
        """The per-sample entries of an env-flow output: dicts, or row references."""
        ...

    def materialize(self, samples: list[Any]) -> list[Any]:
        """Samples as per-sample dicts on the driver (for a replay sample manager)."""
        ...

    def wait(self) -> None:
        """Return once every call issued so far has finished (raising the first failure)."""
        ...

    def release(self) -> None:
        """Drop every stored output of the episode that just ended."""
        ...

    def hook(self, name: str) -> None:
        """Call a no-argument hook (``before_episode``, ``after_episode``) on every module."""
        ...

    def metrics(self) -> dict[str, dict[str, float]]: ...

    def step_seconds(self) -> list[tuple[str, str, float]]:
        """Model calls finished since the last call, as (module, method, seconds run)."""
        ...

    def sync(self, src: BaseModule, dst: BaseModule, *, bucket_mb: int) -> int:
        """Copy ``src``'s parameters into ``dst``; returns the bytes moved."""
        ...

    def state_dicts(self, *, iteration: int) -> dict[str, dict[str, Any]]: ...

    def load_state_dicts(self, states: dict[str, dict[str, Any]]) -> None: ...

    def shutdown(self) -> None: ...
