"""The driver's progress: its termination message, what it writes, its metrics while it
runs, and the job status the operator makes of both."""

from __future__ import annotations

import datetime as dt
import math

import pytest
from test_gang_decisions import Sim

from rlhfjob_operator import progress
from rlhfjob_operator.kube.status import format_time
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


def _driver_ends_with(sim: Sim, last: Progress) -> None:
    """The driver pod succeeds with ``last`` as its termination message; one step."""
    sim.finish("job-driver-g0", 0, reason="Completed")
    terminated = sim.pods["job-driver-g0"]["status"]["containerStatuses"][0]["state"]["terminated"]
    terminated["message"] = last.message()
    sim.step(1)


def test_the_job_status_takes_the_driver_s_last_word() -> None:
    sim = Sim()
    sim.step()
    sim.run_all()
    sim.step()
    _driver_ends_with(sim, Progress(episode=2, num_episode=2, reward=0.75))
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


NOW = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.timezone.utc)
METRICS = """\
# TYPE rlhfjob_episode gauge
rlhfjob_episode{rlhf_job="j"} 3.0
# TYPE rlhfjob_num_episode gauge
rlhfjob_num_episode{rlhf_job="j"} 10.0
# TYPE rlhfjob_episode_duration_seconds gauge
rlhfjob_episode_duration_seconds{rlhf_job="j"} 2.5
# TYPE rlhfjob_samples_per_second gauge
rlhfjob_samples_per_second{rlhf_job="j"} 40.0
# TYPE rlhfjob_last_checkpoint_episode gauge
rlhfjob_last_checkpoint_episode{rlhf_job="j"} 2.0
# TYPE rlhfjob_reward_mean gauge
rlhfjob_reward_mean{module="value",rlhf_job="j"} NaN
rlhfjob_reward_mean{module="reward",rlhf_job="j"} 0.512345
rlhfjob_reward_mean{module="scorer",rlhf_job="j"} 0.1
"""


def test_the_metrics_give_progress_and_an_eta_from_the_last_episode() -> None:
    live = progress.from_metrics(METRICS, now=NOW)
    assert live == progress.Live(
        episode=3,
        observed_at=NOW,
        num_episode=10,
        reward=0.5123,  # the first module by name with a finite reward, as printed
        samples_per_second=40.0,
        last_checkpoint_episode=2,
        eta=NOW + dt.timedelta(seconds=7 * 2.5),
    )


@pytest.mark.parametrize(
    ("text", "eta"),
    [
        ('rlhfjob_episode{rlhf_job="j"} 0\nrlhfjob_num_episode{rlhf_job="j"} 10\n', None),
        ('rlhfjob_episode{rlhf_job="j"} 4\nrlhfjob_num_episode{rlhf_job="j"} 4\n', NOW),
        ('rlhfjob_episode{rlhf_job="j"} 2\n', None),  # no total: no estimate
    ],
    ids=["before the first episode", "all done", "no total"],
)
def test_an_eta_needs_a_duration_and_a_total(text: str, eta: dt.datetime | None) -> None:
    live = progress.from_metrics(text, now=NOW)
    assert live is not None and live.eta == eta and live.last_checkpoint_episode is None


@pytest.mark.parametrize(
    "text",
    ["", "not metrics {", 'rlhfjob_num_episode{rlhf_job="j"} 3\n', "rlhfjob_episode -1\n"],
)
def test_what_holds_no_episode_is_no_progress(text: str) -> None:
    assert progress.from_metrics(text, now=NOW) is None


def test_live_progress_shows_while_running_and_the_last_word_wins_at_the_end() -> None:
    sim = Sim()
    sim.step()
    sim.run_all()
    sim.step()
    live = progress.from_metrics(METRICS, now=sim.now)
    sim.step(1, live=live)
    assert sim.status.phase == "Running"
    assert (sim.status.episode, sim.status.reward) == (3, 0.5123)
    assert sim.status.progress is not None
    assert live is not None and live.eta is not None
    assert sim.status.progress.eta == format_time(live.eta)
    assert sim.status.progress.observed_at == format_time(live.observed_at)
    assert sim.status.progress.last_checkpoint_episode == 2
    sim.step(1)  # no read this time: the last one stays
    assert sim.status.progress is not None and sim.status.progress.episode == 3
    _driver_ends_with(sim, Progress(episode=10, num_episode=10, reward=0.9))
    assert sim.status.phase == "Succeeded"
    assert (sim.status.episode, sim.status.reward) == (10, 0.9)
    assert sim.status.progress is not None and sim.status.progress.eta is None
