"""Tracing flows into DAGs, and the flows the tracer refuses before any model runs."""

from __future__ import annotations

import pytest

from rlhfjob import BaseModule, ControlDependencies, FlowError
from rlhfjob.flow import trace


class Recorder(BaseModule):
    """Fails loudly if tracing ever runs a real step."""

    def forward_step(self, data, iteration):
        raise AssertionError("a model ran during tracing")

    def forward_step2(self, data, iteration):
        raise AssertionError("a model ran during tracing")


a, b, c, d = (Recorder(n) for n in "abcd")


def test_fan_in_keeps_argument_order():
    def flow(batch):
        x = a.forward_step(batch)
        y = b.forward_step(batch)
        z = c.forward_step(batch)
        return d.forward_step(z, x, y)

    graph = trace(flow)
    assert [n.label for n in graph.nodes] == [
        "a.forward_step",
        "b.forward_step",
        "c.forward_step",
        "d.forward_step",
    ]
    assert graph.nodes[3].inputs == (2, 0, 1)
    assert graph.outputs == (3,)
    assert [m.name for m in graph.entry_modules] == ["a", "b", "c"]


def test_parallel_branches_depend_only_on_their_inputs():
    def flow(batch):
        x = a.forward_step(batch)
        y = b.forward_step(x)
        z = c.forward_step(x)
        return d.forward_step(y, z)

    graph = trace(flow)
    assert graph.nodes[1].deps == (0,)
    assert graph.nodes[2].deps == (0,)
    assert graph.nodes[3].inputs == (1, 2)
    assert graph.consumers() == {0: 2, 1: 1, 2: 1, 3: 1}


def test_one_module_through_two_methods():
    def flow(batch):
        x = a.forward_step(batch)
        return a.forward_step2(x)

    graph = trace(flow)
    assert [n.label for n in graph.nodes] == ["a.forward_step", "a.forward_step2"]
    assert len(graph.modules) == 1


def test_print_and_other_calls_are_ignored(capsys):
    def flow(batch):
        print("tracing", batch)
        x = a.forward_step(batch)
        scale = len([1, 2, 3]) * 2  # plain Python runs as written
        print(scale, x)
        return b.forward_step(x)

    graph = trace(flow)
    assert [n.label for n in graph.nodes] == ["a.forward_step", "b.forward_step"]
    assert "tracing <traced the flow's input>" in capsys.readouterr().out


def test_control_dependencies_add_ordering_edges():
    def flow(batch):
        x = a.forward_step(batch)
        with ControlDependencies(x):
            y = b.forward_step(batch)
        z = c.forward_step(batch)
        return d.forward_step(y, z)

    graph = trace(flow)
    assert graph.nodes[1].inputs == (-1,)
    assert graph.nodes[1].after == (0,)
    assert graph.nodes[2].after == ()


def test_trainer_flow_returning_nothing():
    def flow(batch):
        a.forward_step(batch)
        b.forward_step(batch)

    assert trace(flow).outputs == ()


def _line_of(fn, text):
    import inspect

    lines, start = inspect.getsourcelines(fn)
    return start + next(i for i, line in enumerate(lines) if text in line)


def test_branch_on_model_output_names_function_and_line():
    def branching(batch):
        x = a.forward_step(batch)
        if x:  # MARK
            return b.forward_step(x)
        return c.forward_step(x)

    with pytest.raises(FlowError) as err:
        trace(branching)
    message = str(err.value)
    assert "branching" in message
    assert f"test_flow.py:{_line_of(branching, '# MARK')}" in message
    assert "a.forward_step" in message


@pytest.mark.parametrize(
    "use",
    [
        lambda x: x["key"],
        lambda x: len(x),
        lambda x: list(x),
        lambda x: x.shape,
        lambda x: x == 1,
        lambda x: "k" in x,
    ],
)
def test_using_an_output_as_a_value_is_refused(use):
    def flow(batch):
        x = a.forward_step(batch)
        use(x)
        return x

    with pytest.raises(FlowError, match="placeholders while the flow is traced"):
        trace(flow)


def test_returning_a_non_output_is_refused():
    def returns_dict(batch):
        a.forward_step(batch)
        return {"reward": 1}

    with pytest.raises(FlowError, match=r"returns_dict .*not a model output"):
        trace(returns_dict)

    def returns_input(batch):
        a.forward_step(batch)
        return batch

    with pytest.raises(FlowError, match="not a model output"):
        trace(returns_input)


def test_calling_a_model_on_a_foreign_value_is_refused():
    def foreign(batch):
        x = a.forward_step(batch)
        return b.forward_step(x, {"extra": 1})  # MARK

    with pytest.raises(FlowError) as err:
        trace(foreign)
    assert "argument 2 is dict" in str(err.value)
    assert f":{_line_of(foreign, '# MARK')}" in str(err.value)


def test_value_from_another_trace_is_refused():
    leaked = []

    def first(batch):
        out = a.forward_step(batch)
        leaked.append(out)
        return out

    trace(first)

    def second(batch):
        return b.forward_step(leaked[0])

    with pytest.raises(FlowError, match="neither the flow's input nor a model output"):
        trace(second)


def test_same_method_twice_is_refused():
    def twice(batch):
        x = a.forward_step(batch)
        return a.forward_step(x)

    with pytest.raises(FlowError, match=r"a\.forward_step\(\) is called twice"):
        trace(twice)


def test_flow_without_model_calls_and_bad_arity():
    with pytest.raises(FlowError, match="calls no model"):
        trace(lambda batch: None)
    with pytest.raises(FlowError, match="exactly one argument"):
        trace(lambda: a.forward_step(None))


def test_keyword_inputs_and_no_inputs_are_refused():
    with pytest.raises(FlowError, match="positionally"):
        trace(lambda batch: a.forward_step(data=batch))
    with pytest.raises(FlowError, match="no input"):
        trace(lambda batch: a.forward_step())


def test_modules_run_normally_outside_tracing():
    class Echo(BaseModule):
        def forward_step(self, data, iteration):
            return {"seen": data["x"], "it": iteration}

    assert Echo("e").forward_step({"x": 1}, 7) == {"seen": 1, "it": 7}
