"""Pure: the progress a driver reports when it ends, as its container's termination message.

A driver that finishes its episodes writes one JSON line to the file the kubelet
mounts at the container's ``terminationMessagePath`` (Kubernetes' default,
``/dev/termination-log``; ``RLHFJOB_TERMINATION_LOG`` names another). The
kubelet copies it into the pod's ``state.terminated.message``; the operator
reads it into the job's status, so ``kubectl get rlhfjobs`` shows the episode
and reward the job ended with::

    {"episode": 30, "numEpisode": 30, "reward": 0.9153}

The reward is the last episode's ``reward_mean`` of the module that reports one
(the first by name when several do); absent when none does.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Progress", "from_summary", "parse"]
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


def from_summary(summary: Mapping[str, Any], *, num_episode: int) -> Progress:
    """The progress of an episode summary (a dict ``Engine.learn()`` returns)."""
    rewards = sorted(
        (key, value)
        for key, value in summary.items()
        if key.endswith("/reward_mean")
        and not key.startswith("eval/")
        and isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
    )
    return Progress(
        episode=int(summary.get("episode", 0)),
        num_episode=num_episode,
        # Four significant digits, as the driver prints its episode lines.
        reward=float(f"{rewards[0][1]:.4g}") if rewards else None,
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
