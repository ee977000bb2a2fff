"""Prompt streams, the StreamDataset, and batching: pure bookkeeping, no models.

Everything here is deterministic given its seed and position, so a checkpoint
stores positions (``state_dict``) and a resumed run takes exactly the samples
an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import default_collate

__all__ = [
    "EpisodeReplayBuffer",
    "PromptStream",
    "StreamDataset",
    "TrainBatch",
    "collate",
    "split_samples",
]


def _per_sample(value: Any) -> bool:
    """Whether a sample's value batches as a plain list, one entry per sample: text, chat
    messages, a file's other columns and nulls (``default_collate`` would transpose a
    list, and refuses None)."""
    return value is None or isinstance(value, (str, list, tuple, Mapping))


def collate(samples: Sequence[Any]) -> Any:
    """Collate per-sample dicts into one batch (torch's ``default_collate``).

    In dicts, a key whose value in some sample is a string, list, tuple, mapping or
    None becomes a list of the samples' values, unchanged (so a batch of chat
    prompts is a list of message lists). Raises ValueError naming the key when
    samples disagree in shape, the usual cause being responses of different
    lengths: pad them to one length.
    """
    samples = list(samples)
    if samples and all(isinstance(s, dict) for s in samples):
        listed = {k for k in samples[0] if any(_per_sample(s.get(k)) for s in samples)}
        if listed:
            rest = collate([{k: v for k, v in s.items() if k not in listed} for s in samples])
            return {k: [s.get(k) for s in samples] if k in listed else rest[k] for k in samples[0]}
    try:
        return default_collate(samples)
    except RuntimeError as exc:
        keys = ""
        if samples and isinstance(samples[0], dict):
            shapes = {
                k: sorted({tuple(s[k].shape) for s in samples if isinstance(s[k], torch.Tensor)})
                for k in samples[0]
            }
            keys = ", ".join(f"{k}: {v}" for k, v in shapes.items() if len(v) > 1)
        raise ValueError(
            f"cannot batch samples whose tensors differ in shape ({keys or exc}); pad each "
            "key to one shape per episode"
        ) from exc


def split_samples(batch: Any) -> list[Any]:
    """Split a batch dict (values with the batch as first dim) into per-sample dicts."""
    if not isinstance(batch, dict):
        raise ValueError(
            f"a model output must be a dict of batched values, got {type(batch).__name__}"
        )
    sizes = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            if value.dim() == 0:
                raise ValueError(f"output key {key!r} is a scalar tensor; give it a batch dim")
            sizes[key] = value.shape[0]
        elif isinstance(value, (list, tuple)):
            sizes[key] = len(value)
        else:
            raise ValueError(
                f"output key {key!r} is a {type(value).__name__}; values must be tensors or "
                "lists with the batch as first dimension"
            )
    if len(set(sizes.values())) > 1:
        raise ValueError(f"output keys disagree on the batch size: {sizes}")
    n = next(iter(sizes.values()), 0)
    return [{key: value[i] for key, value in batch.items()} for i in range(n)]


class PromptStream:
    """An endless stream over one or more prompt lists, reshuffled on each pass.

    With several datasets (``set_multiple_datasets``) the stream takes
    ``ratio[d]`` prompts from dataset ``d`` in turn (ChatLearn's ``data_ratio``;
    default one from each; a single entry is that many from each, as ChatLearn's
    ``data_ratio: 2``), each dataset wrapping on its own. The order of pass
    ``k`` of dataset ``d`` is a permutation drawn from ``(seed, d, k)``, so the
    state is just positions.
    """

    def __init__(
        self,
        datasets: Sequence[Sequence[Any]],
        *,
        seed: int,
        shuffle: bool,
        ratio: Sequence[int] | None = None,
    ) -> None:
        if not datasets or any(len(d) == 0 for d in datasets):
            raise ValueError("a prompt dataset is empty; give at least one prompt")
        ratio = list(ratio) if ratio is not None else [1]
        if len(ratio) == 1:
            ratio = ratio * len(datasets)
        if len(ratio) != len(datasets):
            raise ValueError(
                f"runtime.data_ratio has {len(ratio)} entries but there are {len(datasets)} "
                "prompt datasets; give one ratio per dataset of set_multiple_datasets, "
                "or one for all"
            )
        self.datasets = [list(d) for d in datasets]
        self.ratio = ratio
        # (dataset, its first slot) for each slot of one round of sum(ratio) prompts
        self._slots = [(d, start) for d, r in enumerate(ratio) for start in [sum(ratio[:d])] * r]
        self.seed = seed
        self.shuffle = shuffle
        self.consumed = 0  # prompts taken from the stream so far, all datasets together
        self._orders: dict[tuple[int, int], list[int]] = {}

    def _order(self, dataset: int, epoch: int) -> list[int]:
        key = (dataset, epoch)
        if key not in self._orders:
            order = list(range(len(self.datasets[dataset])))
            if self.shuffle:
                random.Random(f"{self.seed}/{dataset}/{epoch}").shuffle(order)
            self._orders = {key: order}  # keep one pass cached; older passes are never needed
        return self._orders[key]

    def _locate(self, position: int) -> tuple[int, int]:
        """(dataset, index in it) of the prompt at stream ``position``."""
        round_, slot = divmod(position, len(self._slots))
        dataset, first = self._slots[slot]
        index = round_ * self.ratio[dataset] + slot - first
        size = len(self.datasets[dataset])
        return dataset, self._order(dataset, index // size)[index % size]

    def take(self, n: int) -> list[Any]:
        out = [self.datasets[d][i] for d, i in map(self._locate, self.positions(n))]
        self.consumed += n
        return out

    def positions(self, n: int) -> range:
        """The stream positions the next ``take(n)`` takes."""
        return range(self.consumed, self.consumed + n)

    def prompt_ids(self, positions: range) -> list[str]:
        """Each position's prompt as ``"<dataset>:<index>"`` (its index in the list given
        to ``set_dataset``, or to ``set_multiple_datasets`` for that dataset): what the
        prompt ledger records."""
        return [f"{d}:{i}" for d, i in map(self._locate, positions)]

    def state_dict(self) -> dict[str, int]:
        return {"consumed": self.consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.consumed = int(state["consumed"])


@dataclasses.dataclass
class EpisodeReplayBuffer:
    """One episode's samples, as ChatLearn's replay sample manager sees them."""

    episode_id: int  # 0-based, as ChatLearn's (the first episode's buffer is 0)
    buffer: list[Any]

    @property
    def _episode_id(self) -> int:
        # ChatLearn's tests and GRPO code read the private spelling; the same value.
        return self.episode_id


@dataclasses.dataclass(frozen=True)
class TrainBatch:
    """One global batch for the trainer flow: its samples in order, and the micro size.

    Samples are per-sample dicts in-process, or references to rows that stay
    on the workers that produced them; executors turn a TrainBatch into the
    list of collated micro-batches that ``train_step`` gets. Data-parallel
    replicas each take a contiguous share (``shard``).
    """

    samples: list[Any]
    micro_batch: int

    def shard(self, index: int, count: int) -> TrainBatch:
        """Replica ``index`` of ``count``'s contiguous share (sizes differ by at most one)."""
        n = len(self.samples)
        start, stop = n * index // count, n * (index + 1) // count
        return TrainBatch(self.samples[start:stop], self.micro_batch)

    def micro_batches(self, samples: list[Any] | None = None) -> list[Any]:
        """The collated micro-batches of ``samples`` (default: this batch's own)."""
        samples = self.samples if samples is None else samples
        return [
            collate(samples[m : m + self.micro_batch])
            for m in range(0, len(samples), self.micro_batch)
        ]


class StreamDataset:
    """The samples of the current episode (and the replay window), cut into train batches.

    ``fixed``: each episode must yield exactly ``sample_per_episode`` samples
    (after the replay manager, if any); anything else is an error that says so.
    ``dynamic``: any positive number. In both, a last global batch smaller
    than ``train_global_batch_size`` is trained too (in micro-batches of at
    most ``train_micro_batch_size``), so no sample is dropped.
    """

    def __init__(
        self,
        *,
        sample_per_episode: int,
        micro_batch: int,
        global_batch: int,
        loader: str,
        max_replay_episode: int,
        replay_episode_offset: int = 0,
        seed: int,
        shuffle: bool,
    ) -> None:
        self.sample_per_episode = sample_per_episode
        self.micro_batch = micro_batch
        self.global_batch = global_batch
        self.loader = loader
        self.max_replay_episode = max_replay_episode
        self.replay_episode_offset = replay_episode_offset
        self.seed = seed
        self.shuffle = shuffle
        self.replay: list[EpisodeReplayBuffer] = []
        self.samples: list[Any] = []

    def set_episode(
        self,
        episode: int,
        samples: list[Any],
        replay_manager: Callable[[list[EpisodeReplayBuffer]], list[Any]] | None,
    ) -> None:
        """Install one episode's samples; the replay manager may rewrite them.

        Replay buffers are kept (and checkpointed) only when there is a manager
        to read them, ``max_replay_episode`` is not 0, and from episode
        ``replay_episode_offset`` (0-based) on: otherwise the episode trains on
        its own samples, the manager not called and its buffer never kept, as
        ChatLearn's (0 disables replay; -1 keeps every episode). The engine
        refuses a manager with 0 before any episode runs (``Engine._run``).
        """
        train = samples
        keep = self.max_replay_episode
        if replay_manager is not None and keep != 0 and episode >= self.replay_episode_offset:
            self.replay.append(EpisodeReplayBuffer(episode_id=episode, buffer=samples))
            if keep > 0:
                self.replay = self.replay[-keep:]
            train = replay_manager(list(self.replay))
        if not isinstance(train, list):
            raise ValueError(
                f"the replay sample manager must return a list of samples, got "
                f"{type(train).__name__}"
            )
        if self.loader == "fixed" and len(train) != self.sample_per_episode:
            raise ValueError(
                f"episode {episode} produced {len(train)} samples for training but "
                f"runtime.sample_per_episode is {self.sample_per_episode} and "
                "runtime.stream_data_loader_type is 'fixed'; use 'dynamic' when the count varies"
            )
        if not train:
            raise ValueError(f"episode {episode} produced no samples to train on")
        self.samples = train

    def global_batches(self, *, episode: int, epoch: int) -> Iterator[TrainBatch]:
        """Yield one TrainBatch per optimizer step, shuffled per (episode, epoch)."""
        order = list(range(len(self.samples)))
        if self.shuffle:
            random.Random(f"{self.seed}/train/{episode}/{epoch}").shuffle(order)
        for start in range(0, len(order), self.global_batch):
            ids = order[start : start + self.global_batch]
            yield TrainBatch([self.samples[i] for i in ids], self.micro_batch)

    def state_dict(self) -> dict[str, Any]:
        return {"replay": [dataclasses.asdict(b) for b in self.replay]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.replay = [EpisodeReplayBuffer(**b) for b in state["replay"]]
