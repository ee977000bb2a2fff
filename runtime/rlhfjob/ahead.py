"""Generation ahead of training (``runtime.max_staleness``): the env flows in flight, and
the prompt ledger.

With ``max_staleness`` k, the env flow of episode e+k is submitted at the start of
episode e, after the parameter sync of episode e-1 and before e's training. Each
worker runs its operations in submission order, so the weights a generation sees
are fixed by that order, not by timing: a run is deterministic whatever the order
in which workers finish, in process and under ``rlhfjob run`` alike. Samples are
taken by call, in the order the calls were issued, never in completion order.

Weight versions count trained episodes: version 0 is the initial weights, version
e the weights after episode e's training and sync. An episode's samples carry the
version their env flow ran on (``Generation.version``); episode e trains with
version e-1, so its samples' staleness is ``e - 1 - version`` <= k.

The ledger (one entry per episode whose env flow was submitted, in the checkpoint
and as ``ledger.json`` beside it; ``rlhfjob ledger`` prints it) records which
prompts each episode generated from, on which weights, and with which weights it
trained on them; a resumed run must reproduce the uninterrupted run's ledger.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

__all__ = ["Generation", "ledger_entry", "waits"]

MetricsReply = Callable[[], dict[str, dict[str, float]]]


@dataclasses.dataclass
class Generation:
    """One episode's env flow, submitted and perhaps still running.

    ``handles``: per generation batch, the handles of the flow's returned calls
    (``labels`` name them); ``samples``: the samples taken on the driver instead
    (materialised for a checkpoint, or restored from one), which win over handles.
    ``metrics``: the env flow's modules' metrics, asked right after its calls.
    """

    episode: int
    version: int
    prompts: list[str]
    handles: list[list[Any]]
    labels: list[str]
    metrics: MetricsReply
    samples: list[Any] | None = None
    _metrics: dict[str, dict[str, float]] | None = None

    def metrics_now(self) -> dict[str, dict[str, float]]:
        """The metrics reply (waited for once, then kept)."""
        if self._metrics is None:
            self._metrics = self.metrics()
        return self._metrics

    def saved(self) -> dict[str, Any]:
        """What a checkpoint keeps of it (``samples`` must be materialised)."""
        assert self.samples is not None, "materialise a generation before saving it"
        return {
            "episode": self.episode,
            "version": self.version,
            "prompts": self.prompts,
            "samples": self.samples,
            "metrics": self.metrics_now(),
        }

    @classmethod
    def restored(cls, saved: dict[str, Any]) -> Generation:
        metrics = saved["metrics"]
        return cls(
            episode=saved["episode"],
            version=saved["version"],
            prompts=list(saved["prompts"]),
            handles=[],
            labels=[],
            metrics=lambda: metrics,
            samples=list(saved["samples"]),
        )


def ledger_entry(generation: Generation, *, copies: int) -> dict[str, Any]:
    """The ledger's entry for a generation just submitted; ``trained_with`` is filled in
    when its episode trains (None until then)."""
    return {
        "episode": generation.episode,
        "prompts": list(generation.prompts),
        "copies": copies,
        "generated_with": generation.version,
        "trained_with": None,
    }


def waits(
    *, generating: float, collecting: float, trained: float, generated: float
) -> dict[str, float]:
    """How long training and generation each waited for the other in one episode, from
    the driver's clock: ``generating`` (seconds spent submitting env flows; in process
    they run then), ``collecting`` (waiting for this episode's samples), ``trained``
    (the training finished) and ``generated`` (the env flows in flight finished; when
    the training was submitted if they were done by then).

    Training waits while the samples it needs are made, and at the end for a generation
    still running (the sync needs its workers); generation waits for the training of
    the weights it needs. At ``max_staleness`` 0 they are the generation and training
    times themselves; overlapped, both fall towards 0.
    """
    return {
        "train_wait_s": generating + collecting + max(0.0, generated - trained),
        "generation_wait_s": max(0.0, trained - generated),
    }
