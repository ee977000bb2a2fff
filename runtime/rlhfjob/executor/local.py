"""The in-process executor: every module lives in the driver's process."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from typing import Any

import torch

from rlhfjob import sharding
from rlhfjob.data import TrainBatch, split_samples
from rlhfjob.flow import Node
from rlhfjob.module import BaseModule
from rlhfjob_operator.spec import JobConfig


def merge_inputs(label: str, inputs: Sequence[Any]) -> Any:
    """A call's inputs as one value: dicts merged in argument order (later keys win).

    One input is passed as a shallow copy, so a module that adds keys to its
    input cannot change what a parallel branch sees. A TrainBatch becomes its
    list of collated micro-batches.
    """
    inputs = [i.micro_batches() if isinstance(i, TrainBatch) else i for i in inputs]
    if len(inputs) == 1:
        (only,) = inputs
        if isinstance(only, dict):
            return dict(only)
        if isinstance(only, list):
            return list(only)
        return only
    merged: dict[str, Any] = {}
    for position, value in enumerate(inputs):
        if not isinstance(value, dict):
            raise ValueError(
                f"{label}() gets {len(inputs)} inputs, so each must be a dict to merge; input "
                f"{position + 1} is a {type(value).__name__}"
            )
        merged.update(value)
    return merged


def sync_parameters(module: BaseModule) -> dict[str, torch.Tensor]:
    """``module``'s sync parameters sorted by name: the one order of the parameter specs,
    the broadcast, the copy and a sharded source's gathers, which every rank of a
    collective must share."""
    params = module.named_parameters_to_sync()
    return {k: params[k] for k in sorted(params)}


def copy_parameters(src: BaseModule, dst: BaseModule) -> int:
    """Copy ``src``'s sync parameters into ``dst``'s in place; returns bytes copied.

    Raises ValueError naming missing, unexpected or mis-shaped parameters. A
    sharded ``src``'s parameters are gathered whole first (collective over its
    replicas: see ``rlhfjob.sharding``).
    """
    source = sync_parameters(src)
    source = dict(zip(source, sharding.full_tensors(list(source.values())), strict=True))
    target = dst.named_parameters_to_sync()
    missing = sorted(set(source) - set(target))
    extra = sorted(set(target) - set(source))
    if missing or extra:
        raise ValueError(
            f"parameter sync {src.name} -> {dst.name}: the models differ in parameter names "
            f"(only in {src.name}: {missing[:5]}, only in {dst.name}: {extra[:5]}); sync pairs "
            "must be the same architecture"
        )
    moved = 0
    with torch.no_grad():
        for name, tensor in source.items():
            out = target[name]
            if out.shape != tensor.shape:
                raise ValueError(
                    f"parameter sync {src.name} -> {dst.name}: {name} has shape "
                    f"{tuple(tensor.shape)} in {src.name} but {tuple(out.shape)} in {dst.name}"
                )
            out.copy_(tensor)
            moved += tensor.numel() * tensor.element_size()
    return moved


def module_checkpoint(module: BaseModule) -> dict[str, Any]:
    """What a checkpoint holds for one module: its state_dict and its RNG stream."""
    assert module.rng is not None, "modules are bound before they are saved"
    return {"state": module.state_dict(), "rng": module.rng.state}


def load_module_checkpoint(module: BaseModule, saved: dict[str, Any]) -> None:
    module.load_state_dict(saved["state"])
    assert module.rng is not None
    module.rng.state = saved["rng"]


class LocalExecutor:
    """Runs every call directly; handles are the values themselves."""

    def __init__(self, config: JobConfig) -> None:
        self.config = config
        self.modules: list[BaseModule] = []
        self.steps: list[tuple[str, str, float]] = []

    def setup(
        self,
        modules: Sequence[BaseModule],
        *,
        sync_pairs: Sequence[tuple[BaseModule, BaseModule]] = (),
    ) -> None:
        del sync_pairs  # one process: every pair is colocated
        self.modules = list(modules)
        for module in self.modules:
            module.bind(self.config)
        for module in self.modules:
            module.run_hook(module.setup)

    def build_dataset(self, module: BaseModule, prompts: list[Any], *, is_eval: bool) -> list[Any]:
        return list(module.run_hook(module.build_dataset, prompts, is_eval))

    def call(self, node: Node, inputs: Sequence[Any], *, iteration: int | None) -> Any:
        data = merge_inputs(node.label, inputs)
        start = time.perf_counter()
        out = node.module.call_hook(node.method, data, iteration)
        self.steps.append((node.module.name, node.method, time.perf_counter() - start))
        return out

    def fetch(self, handle: Any) -> Any:
        return handle

    def samples(self, handle: Any, *, label: str) -> list[Any]:
        if handle is None:
            raise ValueError(
                f"{label} returned None but its output is the env flow's result; return a "
                "dict of batched values"
            )
        return split_samples(handle)

    def materialize(self, samples: list[Any]) -> list[Any]:
        return samples

    def begin(self, scope: int) -> None:
        """Calls run when issued: scopes only matter where calls are in flight."""

    def wait(self, scope: int | None = None) -> None:
        """Calls run when issued: nothing is ever in flight."""

    def done(self, scope: int) -> bool:
        return True

    def release(self, scope: int | None = None) -> None:
        """Nothing is stored apart from the values themselves."""

    def hook(self, name: str) -> None:
        for module in self.modules:
            module.run_hook(getattr(module, name))

    def metrics(self, modules: Collection[str] | None = None) -> dict[str, dict[str, float]]:
        return {
            m.name: dict(m.get_and_clear_metrics() or {})
            for m in self.modules
            if modules is None or m.name in modules
        }

    def metrics_later(
        self, modules: Collection[str] | None = None
    ) -> Callable[[], dict[str, dict[str, float]]]:
        taken = self.metrics(modules)  # every call issued so far has run
        return lambda: taken

    def step_seconds(self) -> list[tuple[str, str, float]]:
        steps, self.steps = self.steps, []
        return steps

    def sync(self, src: BaseModule, dst: BaseModule) -> int:
        # One process: a copy in place is the whole sync; buckets matter only across workers.
        return copy_parameters(src, dst)

    def save_hooks(self, *, iteration: int) -> None:
        for module in self.modules:
            module.run_hook(module.save_checkpoint, iteration)

    def state_dicts(self) -> dict[str, dict[str, Any]]:
        return {module.name: module_checkpoint(module) for module in self.modules}

    def load_state_dicts(self, states: dict[str, dict[str, Any]]) -> None:
        for module in self.modules:
            if module.name in states:
                load_module_checkpoint(module, states[module.name])

    def shutdown(self) -> None:
        self.modules = []
