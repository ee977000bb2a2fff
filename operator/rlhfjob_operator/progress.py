"""Pure: a driver's progress, as it reports it when it ends and while it runs.

**When it ends**, as its container's termination message.

A driver that finishes its episodes writes one JSON line to the file the kubelet
mounts at the container's ``terminationMessagePath`` (Kubernetes' default,
``/dev/termination-log``; ``RLHFJOB_TERMINATION_LOG`` names another). The
kubelet copies it into the pod's ``state.terminated.message``; the operator
reads it into the job's status, so ``kubectl get rlhfjobs`` shows the episode
and reward the job ended with::

    {"episode": 30, "numEpisode": 30, "reward": 0.9153}

The reward is the last episode's ``reward_mean`` of the module that reports one
(the first by name when several do); absent when none does.

**While it runs**, from its Prometheus metrics (:func:`from_metrics`, the text of
``/metrics``, which the operator reads at a bounded rate): the same episode and
reward, samples per second, the newest checkpoint's episode, and an estimated
finish: now plus the episodes left times the last episode's duration. An ETA is
absent before the first episode ends (no duration yet), and is ``now`` once every
episode is done.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["Live", "Progress", "from_metrics", "from_summary", "parse"]
# The kubelet keeps at most this much of a termination message.
MAX_BYTES = 4096


@dataclass(frozen=True)
class Progress:
    episode: int
    num_episode: int | None = None
    reward: float | None = None

    def message(self) -> str:
        body: dict[str, Any] = {"episode": self.episode}
        if self.num_episode is not None:
            body["numEpisode"] = self.num_episode
        if self.reward is not None:
            body["reward"] = self.reward
        return json.dumps(body)


@dataclass(frozen=True)
class Live:
    """A running driver's progress, read from its metrics at ``observed_at``."""

    episode: int
    observed_at: dt.datetime
    num_episode: int | None = None
    reward: float | None = None
    samples_per_second: float | None = None
    last_checkpoint_episode: int | None = None
    eta: dt.datetime | None = None


def _first_reward(rewards: list[tuple[str, float]]) -> float | None:
    """Of ``(module, reward_mean)`` pairs, the finite reward of the first module by its
    summary key ``<module>/reward_mean``, to four significant digits, as the driver prints
    its episode lines; None when no module reports one. The termination message and the
    live reading pick the same module this way."""
    finite = sorted((f"{name}/", value) for name, value in rewards if math.isfinite(value))
    return float(f"{finite[0][1]:.4g}") if finite else None


def from_metrics(text: str, *, now: dt.datetime) -> Live | None:
    """The progress in a driver's ``/metrics`` text; None when it holds none (not the
    exposition format, or no ``rlhfjob_episode`` sample). Non-finite or negative values
    are left out, one by one."""
    values: dict[str, float] = {}
    rewards: list[tuple[str, float]] = []
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "rlhfjob_reward_mean":
                    rewards.append((sample.labels.get("module", ""), sample.value))
                elif sample.name.startswith("rlhfjob_"):
                    values.setdefault(sample.name.removeprefix("rlhfjob_"), sample.value)
    except (ValueError, TypeError, IndexError, KeyError):
        return None

    def count(name: str) -> int | None:
        value = values.get(name)
        if value is None or not math.isfinite(value) or value < 0:
            return None
        return int(value)

    def rate(name: str) -> float | None:
        value = values.get(name)
        return value if value is not None and math.isfinite(value) and value >= 0 else None

    episode, total = count("episode"), count("num_episode")
    if episode is None:
        return None
    duration = rate("episode_duration_seconds")
    eta = None
    if total is not None and episode >= total:
        eta = now
    elif total is not None and duration and episode > 0:
        eta = now + dt.timedelta(seconds=(total - episode) * duration)
    return Live(
        episode=episode,
        observed_at=now,
        num_episode=total,
        reward=_first_reward(rewards),
        samples_per_second=rate("samples_per_second"),
        last_checkpoint_episode=count("last_checkpoint_episode"),
        eta=eta,
    )


def from_summary(summary: Mapping[str, Any], *, num_episode: int) -> Progress:
    """The progress of an episode summary (a dict ``Engine.learn()`` returns)."""
    rewards = [
        (key.removesuffix("/reward_mean"), float(value))
        for key, value in summary.items()
        if key.endswith("/reward_mean")
        and not key.startswith("eval/")
        and isinstance(value, (int, float))
        and not isinstance(value, bool)
    ]
    return Progress(
        episode=int(summary.get("episode", 0)),
        num_episode=num_episode,
        reward=_first_reward(rewards),
    )


def parse(message: str | None) -> Progress | None:
    """The progress in a termination message; None when it holds none (absent, not
    JSON, a message of something else, or values of the wrong type)."""
    if not message:
        return None
    try:
        body = json.loads(message)
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    episode, total, reward = body.get("episode"), body.get("numEpisode"), body.get("reward")
    if not isinstance(episode, int) or not _count(episode):
        return None
    if not (total is None or _count(total)):
        return None
    if reward is not None and not (
        isinstance(reward, (int, float)) and not isinstance(reward, bool) and math.isfinite(reward)
    ):
        return None
    return Progress(
        episode=episode, num_episode=total, reward=None if reward is None else float(reward)
    )


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
