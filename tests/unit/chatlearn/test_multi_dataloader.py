"""Ported from ChatLearn's tests/base/test_multi_dataloader.py (HEAD and v1.0.3). ChatLearn
drives its MultiDatasetSampler and RLHFDataLoader by hand; a user sees them through
``set_multiple_datasets``, ``runtime.data_ratio`` and the prompts each episode's first
model gets, so that is what is checked here. Its ``num_inference_per_prompt`` (each
prompt twice in a row) and data-parallel ranks (each rank half a batch) become one
prompt per sample and the whole episode. Not ported, as rlhfjob has no such keys:
``uid`` (add_uid), ``drop_last0``/``drop_last1`` (drop_last), ``rerank`` and
``dynamic_generation_batchsize`` (data_rerank)."""

from __future__ import annotations

import pytest

from rlhfjob import BaseModule, Engine, Environment, Trainer


class PolicyModel(BaseModule):
    def __init__(self, name, seen):
        super().__init__(name)
        self.seen = seen

    def forward_step(self, data, iteration):
        self.seen.extend(data["prompt"])
        return data

    def build_dataset(self, prompts, is_eval=False):
        return [{"prompt": p} for p in prompts]


class PPOPolicy(BaseModule):
    def train_step(self, data, iteration):
        return len(data)


def _episodes(datasets, *, sample_per_episode, num_episode, path=None, **runtime):
    """The prompts the policy got, one list per episode of this learn()."""
    seen: list = []
    policy, ppo_policy = PolicyModel("policy", seen), PPOPolicy("ppo_policy")
    runtime = {
        "num_episode": num_episode,
        "sample_per_episode": sample_per_episode,
        "generation_batch_size": sample_per_episode,
        "train_micro_batch_size": sample_per_episode,
        "data_shuffle": False,
        **runtime,
    }
    if path is not None:
        runtime.update(data_checkpoint_path=str(path), save_episode_interval=1)
    engine = Engine(
        Environment(lambda b: policy.forward_step(b)),
        Trainer(lambda b: ppo_policy.train_step(b)),
        config={"runtime": runtime, "models": {"ppo_policy": {"trainable": True}}},
    )
    engine.set_multiple_datasets(datasets).learn(progress=False)
    n = sample_per_episode
    return [seen[i : i + n] for i in range(0, len(seen), n)]


def test_single_dataset():
    """single_dataset, training: a dataset shorter than the episode wraps, in order
    ([1, 2] over episodes of 6: 1, 2, 1, 2, ...), and so does the next episode, from
    where the last one stopped (the ``consumed_samples=6`` case)."""
    assert _episodes([[1, 2]], sample_per_episode=6, num_episode=2) == [
        [1, 2, 1, 2, 1, 2],
        [1, 2, 1, 2, 1, 2],
    ]
    assert _episodes([[1, 2, 3]], sample_per_episode=2, num_episode=3) == [
        [1, 2],
        [3, 1],
        [2, 3],
    ]


def test_multi_replica():
    """multi_replica, training: ``data_ratio: [1, 3]`` over [1..5] and [a..i], batches
    of 20 (10 prompts, each twice) over two ranks. ChatLearn's ground truth, rank 0's
    half then rank 1's, one prompt each, is what each episode of 10 gets."""
    dataset1 = [1, 2, 3, 4, 5]
    dataset2 = ["a", "b", "c", "d", "e", "f", "g", "h", "i"]
    rank0 = [[1, "a", "b", "c", 2], ["h", "i", 4, "a", "b"], [1, "g", "h", "i", 2]]
    rank1 = [["d", "e", "f", 3, "g"], ["c", 5, "d", "e", "f"], ["a", "b", "c", 3, "d"]]
    episodes = _episodes(
        [dataset1, dataset2], sample_per_episode=10, num_episode=3, data_ratio=[1, 3]
    )
    assert episodes == [r0 + r1 for r0, r1 in zip(rank0, rank1, strict=True)]


def test_multiple_dataset_checkpoint(tmp_path):
    """multiple_dataset, training with shuffle, then its data checkpoint: a loader that
    resumes after 20 samples continues the first one's sequence (``sequence[20:]``).
    Here: a run resumed after its first episode of 20 gets the second episode the
    uninterrupted run got; every prompt comes from one of the two datasets."""
    datasets = [[1, 2, 3, 4, 5], ["a", "b", "c", "d", "e", "f", "g", "h", "i"]]
    kwargs = dict(sample_per_episode=20, data_ratio=[1, 3], data_shuffle=True)
    sequence = _episodes(datasets, num_episode=2, path=tmp_path / "a", **kwargs)
    assert set(sequence[0] + sequence[1]) <= set(datasets[0] + datasets[1])
    _episodes(datasets, num_episode=1, path=tmp_path / "b", **kwargs)
    new_sequence = _episodes(datasets, num_episode=2, path=tmp_path / "b", **kwargs)
    assert new_sequence == [sequence[1]]


def test_data_ratio_needs_one_entry_per_dataset():
    """chatlearn/data/sampler.py ``MultiDatasetSampler``: it asserts that data_ratio has
    one entry per dataset; here learn() refuses, naming the key and both counts."""
    with pytest.raises(ValueError, match=r"runtime.data_ratio has 3 entries but there are 2"):
        _episodes([[1], [2]], sample_per_episode=2, num_episode=1, data_ratio=[1, 2, 3])


@pytest.mark.parametrize("ratio", [2, [2], "2,2", [2, 2]])
def test_data_ratio_int_is_that_many_from_every_dataset(ratio):
    """chatlearn/data/sampler.py ``MultiDatasetSampler``: an int ``data_ratio`` is
    ``[n] * dataset_num``; the string form is split. rlhfjob reads a one-entry list as
    the int too (an RLHFJob manifest's schema takes lists only)."""
    episodes = _episodes(
        [[1, 2, 3], ["a", "b", "c"]], sample_per_episode=8, num_episode=1, data_ratio=ratio
    )
    assert episodes == [[1, 2, "a", "b", 3, 1, "c", "a"]]
