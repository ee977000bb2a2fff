"""ChatLearn's spellings of config keys, read as rlhfjob's before validation.

Only a ``config=`` document (a dict or a YAML file of ``runtime`` and ``models``) is
read this way; an RLHFJob manifest goes to the API server, whose schema knows
rlhfjob's names alone.
"""

from __future__ import annotations

from typing import Any

from rlhfjob_operator.spec.base import SpecError

__all__ = ["RUNTIME_RENAMES", "from_chatlearn"]

# ChatLearn v1.0.x called the replay buffer the "relay" buffer; HEAD and rlhfjob say replay.
RUNTIME_RENAMES = {
    "max_relay_episode": "max_replay_episode",
    "relay_episode_offset": "replay_episode_offset",
}


def from_chatlearn(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with ChatLearn's spellings renamed to rlhfjob's; ``config`` itself is
    left as it was. A section that is not a mapping is left for validation to refuse.
    Raises SpecError when a key is given in both spellings."""
    runtime = config.get("runtime")
    if not isinstance(runtime, dict) or not RUNTIME_RENAMES.keys() & runtime.keys():
        return config
    renamed = dict(runtime)
    for old, new in RUNTIME_RENAMES.items():
        if old not in renamed:
            continue
        if new in renamed:
            raise SpecError(
                f"runtime.{old} and runtime.{new} are one setting (v1.0.x's spelling and "
                f"today's); keep runtime.{new}"
            )
        renamed[new] = renamed.pop(old)
    return {**config, "runtime": renamed}
