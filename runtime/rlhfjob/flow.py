"""Tracing flow functions into DAGs of model calls.

A flow function is run once, before any model runs, with a placeholder for
its input. Every public method call on a BaseModule made while tracing is
recorded as a node instead of being run; everything else in the function (a
``print``, arithmetic on plain values, logging) runs as written and is
otherwise ignored.

What the tracer refuses, naming the flow function and the line:

- using a model output as a Python value (``if out:``, ``len(out)``,
  ``out["key"]``, ``out.attr``, iterating it): the output does not exist yet;
- calling a model on something that is neither the flow's input nor a model
  output (a literal, a dict built in the flow, another flow's value);
- calling the same method of the same module twice in one flow, which would
  make its outputs and its state ambiguous (call another method, e.g.
  ``forward_step2``, or use another module);
- returning something that is neither a model output, nor a tuple or list of
  distinct model outputs, nor None.

A flow may return several model outputs (``return value_out, reward_out``), as
ChatLearn's engines do: an environment's samples then merge the outputs' dicts
sample by sample, in the order returned (a later output's key wins), and an
evaluator's ``post_process`` gets each output's batches under its model's name.

``ControlDependencies(node, ...)`` used as a context manager adds ordering
edges: calls inside the block run after the given calls even without a data
dependency.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Iterator, Sequence
from types import FrameType
from typing import Any, NoReturn

from rlhfjob import module as _module
from rlhfjob import tracing
from rlhfjob.module import BaseModule

__all__ = ["ControlDependencies", "FlowError", "FlowGraph", "Node", "trace"]


class FlowError(ValueError):
    """A flow the tracer cannot run correctly; the message names the function and line."""


@dataclasses.dataclass(frozen=True)
class Node:
    """One model call: ``module.method(*inputs)``.

    ``inputs`` are indices of earlier nodes, or -1 for the flow's input, in
    argument order; ``after`` are extra ordering edges (ControlDependencies).
    """

    index: int
    module: BaseModule
    method: str
    inputs: tuple[int, ...]
    after: tuple[int, ...]
    where: str  # "file.py:12" of the call, for messages

    @property
    def label(self) -> str:
        return f"{self.module.name}.{self.method}"

    @property
    def deps(self) -> tuple[int, ...]:
        return tuple(i for i in (*self.inputs, *self.after) if i >= 0)


@dataclasses.dataclass(frozen=True)
class FlowGraph:
    """A traced flow: nodes in topological (call) order and the returned nodes."""

    name: str
    nodes: tuple[Node, ...]
    outputs: tuple[int, ...]  # indices of the returned nodes, in order; () for nothing

    @property
    def modules(self) -> list[BaseModule]:
        """Distinct modules in first-call order."""
        seen: dict[int, BaseModule] = {}
        for node in self.nodes:
            seen.setdefault(id(node.module), node.module)
        return list(seen.values())

    @property
    def entry_modules(self) -> list[BaseModule]:
        """Modules whose calls take the flow's input (the first model is ``[0]``)."""
        seen: dict[int, BaseModule] = {}
        for node in self.nodes:
            if -1 in node.inputs:
                seen.setdefault(id(node.module), node.module)
        return list(seen.values())

    def consumers(self) -> dict[int, int]:
        """How many later nodes read each node's output (each flow output counts once)."""
        counts = {node.index: 0 for node in self.nodes}
        for node in self.nodes:
            for i in node.inputs:
                if i >= 0:
                    counts[i] += 1
        for i in self.outputs:
            counts[i] += 1
        return counts


class _Value:
    """The placeholder a traced flow sees for its input and for model outputs."""

    __slots__ = ("_index", "_tracer")

    def __init__(self, tracer: _Tracer, index: int) -> None:
        self._tracer = tracer
        self._index = index

    def _refuse(self, what: str) -> NoReturn:
        self._tracer.fail(
            f"{what} a {self._describe()}: model outputs are placeholders while the flow is "
            "traced, so the flow cannot branch on, index or inspect them. Move that logic into "
            "a model's step (or into Evaluator.post_process)",
            frame=sys._getframe(2),
        )

    def _describe(self) -> str:
        if self._index < 0:
            return "the flow's input"
        return f"the output of {self._tracer.nodes[self._index].label}"

    def __bool__(self) -> bool:
        self._refuse("it tests the truth of")

    def __len__(self) -> int:
        self._refuse("it takes len() of")

    def __iter__(self) -> Iterator[Any]:
        self._refuse("it iterates over")

    def __getitem__(self, key: Any) -> Any:
        self._refuse(f"it indexes [{key!r}] into")

    def __contains__(self, key: Any) -> bool:
        self._refuse("it tests membership in")

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        self._refuse(f"it reads .{attr} of")

    def __eq__(self, other: object) -> bool:
        self._refuse("it compares")

    def __hash__(self) -> int:
        return hash((id(self._tracer), self._index))

    def __repr__(self) -> str:
        return f"<traced {self._describe()}>"


class _Tracer:
    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.nodes: list[Node] = []
        self.after_stack: list[tuple[int, ...]] = []
        self.seen_calls: dict[tuple[int, str], Node] = {}

    def where(self, frame: FrameType | None) -> str:
        """``file:line`` of the innermost frame of the flow (or a helper it calls)."""
        while frame is not None:
            if frame.f_code.co_filename not in _INTERNAL_FILES:
                return f"{frame.f_code.co_filename}:{frame.f_lineno}"
            frame = frame.f_back
        return "<unknown>"

    def fail(self, message: str, *, frame: FrameType | None) -> NoReturn:
        raise FlowError(f"flow {_qualname(self.fn)} ({self.where(frame)}): {message}")

    def record(self, module: BaseModule, method: str) -> Callable[..., Any]:
        """What ``module.method`` resolves to while tracing: a recorder of the call."""

        def recorder(*args: Any, **kwargs: Any) -> Any:
            frame = sys._getframe(1)
            if kwargs:
                self.fail(
                    f"{module.name}.{method}() takes its inputs positionally; keyword arguments "
                    f"({', '.join(kwargs)}) are not model inputs",
                    frame=frame,
                )
            return self.call(module, method, args, frame)

        return recorder

    def call(self, module: BaseModule, method: str, args: tuple[Any, ...], frame: FrameType) -> Any:
        where = self.where(frame)
        label = f"{module.name}.{method}"
        if not args:
            self.fail(
                f"{label}() is called with no input; pass the flow's input or a model output",
                frame=frame,
            )
        inputs = []
        for position, arg in enumerate(args):
            if not isinstance(arg, _Value) or arg._tracer is not self:
                self.fail(
                    f"{label}() argument {position + 1} is {_short(arg)}, which is neither the "
                    "flow's input nor a model output; model calls take only those (build other "
                    "values inside a model's step)",
                    frame=frame,
                )
            inputs.append(arg._index)
        key = (id(module), method)
        if key in self.seen_calls:
            first = self.seen_calls[key]
            self.fail(
                f"{label}() is called twice (first at {first.where}); one method of one module "
                "runs once per batch. Call a second method (e.g. forward_step2) or use another "
                "module",
                frame=frame,
            )
        after = tuple(sorted({i for deps in self.after_stack for i in deps}))
        node = Node(
            index=len(self.nodes),
            module=module,
            method=method,
            inputs=tuple(inputs),
            after=after,
            where=where,
        )
        self.nodes.append(node)
        self.seen_calls[key] = node
        return _Value(self, node.index)


# Frames in these files are the tracer's own, never the flow line to blame.
_INTERNAL_FILES = {__file__, _module.__file__ or "", tracing.__file__ or ""}


def _qualname(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def _short(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"


def _active_tracer() -> _Tracer | None:
    recorder = tracing.active()
    return recorder if isinstance(recorder, _Tracer) else None


def trace(fn: Callable[..., Any], *, name: str | None = None) -> FlowGraph:
    """Trace ``fn`` (a flow of one argument) into a FlowGraph.

    Raises FlowError for the cases in the module docstring, and for a flow that
    calls no model at all. Exceptions the flow raises itself propagate, wrapped
    in a FlowError that names the flow.
    """
    if not callable(fn):
        raise FlowError(f"a flow must be a function of one argument, got {_short(fn)}")
    tracer = _Tracer(fn)
    with tracing.recording(tracer):
        try:
            result = fn(_Value(tracer, -1))
        except FlowError:
            raise
        except TypeError as exc:
            raise FlowError(
                f"flow {_qualname(fn)} could not be traced: {exc}; a flow takes exactly one "
                "argument (the batch)"
            ) from exc
        except Exception as exc:
            raise FlowError(
                f"flow {_qualname(fn)} raised {type(exc).__name__} while being traced: {exc}"
            ) from exc
    if not tracer.nodes:
        raise FlowError(f"flow {_qualname(fn)} calls no model; a flow calls at least one")
    outputs = _outputs(fn, tracer, result)
    return FlowGraph(name=name or _qualname(fn), nodes=tuple(tracer.nodes), outputs=outputs)


def _outputs(fn: Callable[..., Any], tracer: _Tracer, result: Any) -> tuple[int, ...]:
    """The returned nodes: none, one, or a tuple or list of distinct model outputs."""

    def ours(value: Any) -> bool:
        return isinstance(value, _Value) and value._tracer is tracer and value._index >= 0

    if result is None:
        return ()
    if ours(result):
        return (result._index,)
    code = getattr(fn, "__code__", None)
    where = f"{code.co_filename}:{code.co_firstlineno}" if code else "<unknown>"
    if isinstance(result, (tuple, list)) and result and all(ours(v) for v in result):
        indices = tuple(v._index for v in result)
        if len(set(indices)) < len(indices):
            twice = next(i for i in indices if indices.count(i) > 1)
            raise FlowError(
                f"flow {_qualname(fn)} ({where}): it returns the output of "
                f"{tracer.nodes[twice].label} twice; return each model output once"
            )
        return indices
    raise FlowError(
        f"flow {_qualname(fn)} ({where}): it returns {_short(result)}, which is not a "
        "model output; return a model call's result, a tuple of them, or nothing"
    )


class ControlDependencies:
    """Order the calls in a ``with`` block after the given calls::

        with ControlDependencies(policy_out):
            value.forward_step(batch)   # runs after policy.forward_step

    Outside tracing (the flow run eagerly by hand) it does nothing.
    """

    def __init__(self, *dependencies: Any) -> None:
        flat: list[Any] = []
        for dep in dependencies:
            flat.extend(dep if isinstance(dep, (list, tuple)) else [dep])
        self.dependencies = flat

    def __enter__(self) -> ControlDependencies:
        tracer = _active_tracer()
        if tracer is not None:
            indices = []
            for dep in self.dependencies:
                if not isinstance(dep, _Value) or dep._tracer is not tracer or dep._index < 0:
                    tracer.fail(
                        f"ControlDependencies takes model outputs, got {_short(dep)}",
                        frame=sys._getframe(1),
                    )
                indices.append(dep._index)
            tracer.after_stack.append(tuple(indices))
        return self

    def __exit__(self, *exc: object) -> None:
        tracer = _active_tracer()
        if tracer is not None and tracer.after_stack:
            tracer.after_stack.pop()


def run_graph(
    graph: FlowGraph,
    flow_input: Any,
    call: Callable[[Node, Sequence[Any]], Any],
) -> dict[int, Any]:
    """Run ``graph`` in call order; ``call(node, inputs)`` runs one node.

    Returns every node's result by index. The caller decides what a call is
    (direct, or a remote reference); this only wires inputs to outputs.
    """
    results: dict[int, Any] = {}
    with tracing.recording(None):
        for node in graph.nodes:
            inputs = [flow_input if i < 0 else results[i] for i in node.inputs]
            results[node.index] = call(node, inputs)
    return results
