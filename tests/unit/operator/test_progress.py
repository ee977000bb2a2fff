"""The driver's termination message: what it writes, and the job status the operator makes of it."""

from __future__ import annotations

import math

import pytest
from test_gang_decisions import Sim

from rlhfjob_operator import progress
from rlhfjob_operator.progress import Progress


def test_the_summary_gives_episode_and_the_first_modules_reward() -> None:
    summary = {
        "episode": 30,
        "samples_per_s": 120.0,
        "value/reward_mean": 0.5,
        "reward/reward_mean": 0.9153,
        "eval/reward_mean": 0.99,  # an evaluation, not the episode's reward
        "policy/kl": 0.01,
    }
    found = progress.from_summary(summary, num_episode=30)
    assert found == Progress(episode=30, num_episode=30, reward=0.9153)
    assert progress.parse(found.message()) == found
    assert progress.from_summary({"episode": 2}, num_episode=5).reward is None


@pytest.mark.parametrize(
    "message",
    [
        None,
        "",
        "Error: boom",  # a message of something else
        "[1, 2]",
        '{"episode": -1}',
        '{"episode": "3"}',
        '{"episode": true}',
        '{"episode": 3, "numEpisode": 2.5}',
        '{"episode": 3, "reward": "high"}',
        '{"episode": 3, "reward": NaN}',
    ],
)
def test_what_is_not_progress_is_ignored(message: str | None) -> None:
    assert progress.parse(message) is None


def test_a_message_too_long_for_the_kubelet_cannot_happen() -> None:
    big = Progress(episode=10**12, num_episode=10**12, reward=-math.pi)
    assert len(big.message().encode()) < progress.MAX_BYTES


def test_the_job_status_takes_the_driver_s_last_word() -> None:
    sim = Sim()
    sim.step()
    sim.run_all()
    sim.step()
    sim.finish("job-driver-g0", 0, reason="Completed")
    terminated = sim.pods["job-driver-g0"]["status"]["containerStatuses"][0]["state"]["terminated"]
    terminated["message"] = Progress(episode=2, num_episode=2, reward=0.75).message()
    sim.step(1)
    assert sim.status.phase == "Succeeded"
    assert (sim.status.episode, sim.status.reward) == (2, 0.75)


def test_a_driver_without_a_message_leaves_the_figures_unset() -> None:
    sim = Sim()
    sim.step()
    sim.run_all()
    sim.step()
    sim.finish("job-driver-g0", 0, reason="Completed")
    sim.step(1)
    assert sim.status.phase == "Succeeded"
    assert sim.status.episode is None and sim.status.reward is None
