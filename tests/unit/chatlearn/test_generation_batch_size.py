"""``models.<name>.generation_batch_size`` below the runtime's, as ChatLearn's
chatlearn/runtime/decorator.py applies it (v1.0.3 and HEAD): the model's input batch is
cut into pieces of its size, the method called on each, the outputs concatenated; the
other models keep the runtime's batch."""

from __future__ import annotations

import pytest
import torch

from rlhfjob import BaseModule, Engine, Environment, Trainer
from rlhfjob.batching import concat, pieces


class Recorder(BaseModule):
    def setup(self):
        self.sizes = []

    def forward_step(self, data, iteration):
        self.sizes.append((iteration, len(data["query"])))
        return {**data, f"{self.name}_out": data["query"] * 2, "tags": ["t"] * len(data["query"])}


class Collect(BaseModule):
    def setup(self):
        self.seen = []

    def train_step(self, data, iteration):
        self.seen.extend(data)


def test_a_model_with_a_smaller_batch_gets_pieces_and_the_flow_the_whole():
    small, big, collect = Recorder("small"), Recorder("big"), Collect("collect")
    engine = Engine(
        Environment(lambda b: big.forward_step(small.forward_step(b))),
        Trainer(lambda b: collect.train_step(b)),
        config={
            "runtime": {
                "num_episode": 1,
                "sample_per_episode": 10,
                "generation_batch_size": 5,
                "train_micro_batch_size": 10,
                "data_shuffle": False,
            },
            "models": {"small": {"generation_batch_size": 2}, "collect": {"trainable": True}},
        },
    )
    engine.set_dataset([{"query": torch.tensor(float(i))} for i in range(10)])
    engine.learn(progress=False)
    assert small.sizes == [(0, 2), (0, 2), (0, 1), (1, 2), (1, 2), (1, 1)]
    assert big.sizes == [(0, 5), (1, 5)]
    (batch,) = collect.seen
    assert batch["small_out"].tolist() == [2.0 * i for i in range(10)]
    assert batch["tags"] == ["t"] * 10


def test_pieces_keep_values_without_the_batch_whole():
    data = {"x": torch.arange(5), "names": list("abcde"), "scale": torch.tensor(2.0)}
    cut = pieces(data, 2)
    assert [p["x"].tolist() for p in cut] == [[0, 1], [2, 3], [4]]
    assert [p["names"] for p in cut] == [["a", "b"], ["c", "d"], ["e"]]
    assert all(p["scale"] is data["scale"] for p in cut)


def test_pieces_that_do_not_join_are_named():
    with pytest.raises(ValueError, match=r"m.forward_step output 'y' does not join.*pad it"):
        concat([{"y": torch.ones(2, 3)}, {"y": torch.ones(1, 4)}], "m.forward_step")
    with pytest.raises(ValueError, match="different keys"):
        concat([{"y": torch.ones(1)}, {"z": torch.ones(1)}], "m.forward_step")
    with pytest.raises(ValueError, match="NoneType, dict"):
        concat([{"y": torch.ones(1)}, None], "m.forward_step")
    assert concat([None, None], "m.forward_step") is None
