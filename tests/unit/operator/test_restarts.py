"""Where a restarted gang starts again: the words, the checkpoint layout read without torch,
and the operator's Event for a gang restart."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from test_gang_decisions import Sim

from rlhfjob_operator.restarts import (
    latest_saved_episode,
    restart_origin,
    restart_origin_on_kubernetes,
)
from rlhfjob_operator.spec import RuntimeSpec, load_job

NO_CHECKPOINT = "from the beginning: no checkpoint (set runtime.save_episode_interval)"


def runtime(**fields: Any) -> RuntimeSpec:
    fields.setdefault("num_episode", 8)
    if fields.get("save_episode_interval"):
        fields.setdefault("data_checkpoint_path", "/ckpt")
    return RuntimeSpec(**fields)


@pytest.mark.parametrize(
    ("fields", "kwargs", "words"),
    [
        ({"save_episode_interval": 2}, {"saved": 4}, "from episode 5"),
        # What is on disk wins over the spec: an entrypoint's own config may save.
        ({}, {"saved": 4}, "from episode 5"),
        (
            {"save_episode_interval": 2},
            {"saved": 8},
            "from its checkpoint of episode 8: all 8 were done",
        ),
        ({}, {"saved": None}, NO_CHECKPOINT),
        (
            {"save_episode_interval": 3},
            {"saved": None},
            "from the beginning: no checkpoint yet (one is saved after every 3 episodes)",
        ),
        (
            {"save_episode_interval": 1},
            {"saved": None},
            "from the beginning: no checkpoint yet (one is saved after each episode)",
        ),
        (
            {"save_episode_interval": 2, "enable_resume_training": False},
            {"saved": 4},
            "from the beginning: runtime.enable_resume_training is false",
        ),
        # Kubernetes: the launcher cannot look.
        ({}, {"saved": None, "lost": True}, NO_CHECKPOINT),
        (
            {"save_episode_interval": 2},
            {"saved": None, "lost": True},
            "from the beginning: its checkpoints were on an emptyDir, gone with its pods "
            "(set spec.checkpoint.persistentVolumeClaim)",
        ),
        (
            {"save_episode_interval": 2},
            {"saved": None, "claim": "ckpt"},
            "from its last checkpoint on claim ckpt, if one was saved (every 2 episodes)",
        ),
        (
            {"save_episode_interval": 2},
            {"saved": None, "claim": "ckpt", "reported": "/checkpoints/episode_000004"},
            "from its last checkpoint (/checkpoints/episode_000004, on claim ckpt)",
        ),
        ({}, {"saved": None, "claim": "ckpt"}, NO_CHECKPOINT),
    ],
)
def test_the_words_say_where_the_gang_starts_again(
    fields: dict[str, Any], kwargs: dict[str, Any], words: str
) -> None:
    assert restart_origin(runtime(**fields), **kwargs) == words


def test_the_latest_saved_episode_is_the_newest_complete_checkpoint(tmp_path: Path) -> None:
    """The layout by hand (tests/unit/test_checkpoint.py reads what the runtime writes)."""
    assert latest_saved_episode(None) is None
    assert latest_saved_episode("") is None
    assert latest_saved_episode(tmp_path / "absent") is None
    assert latest_saved_episode(tmp_path) is None
    for name in ("episode_000002", "episode_000010", "episode_000004"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "COMPLETE").write_text("{}")
    # An episode 12 killed before its COMPLETE, and things that are no checkpoint.
    (tmp_path / "episode_000012").mkdir()
    (tmp_path / "episode_14").mkdir()
    (tmp_path / "episode_14" / "COMPLETE").write_text("{}")
    (tmp_path / ".tmp-episode_000016-7").mkdir()
    (tmp_path / "notes.txt").write_text("")
    assert latest_saved_episode(tmp_path) == 10


def test_the_operators_restart_event_says_where_the_gang_starts_again() -> None:
    sim = Sim(backoffLimit=3)
    sim.step()
    sim.run_all()
    sim.step()
    sim.finish("job-policy-1-g0", 137, "OOMKilled")
    (event,) = sim.step(1).events
    assert event.reason == "Restarting"
    assert f"restarting the gang {NO_CHECKPOINT} in 10s (restart 1 of 3)" in event.message
    assert sim.status.message == event.message


def _job(checkpoint: dict[str, Any]) -> Any:
    sim = Sim()
    manifest = copy.deepcopy(sim.job.model_dump(by_alias=True, exclude_none=True))
    manifest["spec"]["runtime"].update(save_episode_interval=1, data_checkpoint_path="/x")
    manifest["spec"]["checkpoint"] = checkpoint
    return load_job(manifest)


def test_on_kubernetes_the_checkpoint_volume_decides_what_is_certain() -> None:
    on_empty_dir = _job({"emptyDir": {}})
    assert "emptyDir, gone with its pods" in restart_origin_on_kubernetes(
        on_empty_dir, last_checkpoint=None
    )
    on_claim = _job({"persistentVolumeClaim": {"claimName": "ckpt"}})
    assert restart_origin_on_kubernetes(on_claim, last_checkpoint=None) == (
        "from its last checkpoint on claim ckpt, if one was saved (every episode)"
    )
    assert restart_origin_on_kubernetes(on_claim, last_checkpoint="/c/episode_000003") == (
        "from its last checkpoint (/c/episode_000003, on claim ckpt)"
    )
    # A disrupted gang saves on its way out, off the save_episode_interval beat.
    assert restart_origin_on_kubernetes(on_claim, last_checkpoint=None, stopping=True) == (
        "from the checkpoint it saves as it stops (on claim ckpt; else its last one)"
    )
    assert "emptyDir, gone with its pods" in restart_origin_on_kubernetes(
        on_empty_dir, last_checkpoint=None, stopping=True
    )


def test_a_disrupted_gang_on_an_emptydir_names_the_volume_not_the_interval() -> None:
    """Its driver saves an emergency checkpoint whatever save_episode_interval says, and
    the emptyDir loses it: setting the interval would not help, a claim would."""
    sim = Sim()  # no save_episode_interval, the default emptyDir
    assert sim.job.spec.checkpoint.persistent_volume_claim is None
    words = restart_origin_on_kubernetes(sim.job, last_checkpoint=None, stopping=True)
    assert words == (
        "from the beginning: its checkpoints were on an emptyDir, gone with its pods "
        "(set spec.checkpoint.persistentVolumeClaim)"
    )
