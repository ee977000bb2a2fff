"""kube/scrape.py: when the operator reads a driver's metrics, and what a failed read gives."""

from __future__ import annotations

import datetime as dt
from typing import Any

from rlhfjob_operator.kube.scrape import ProgressReader

NOW = dt.datetime(2026, 12, 3, tzinfo=dt.timezone.utc)
TEXT = 'rlhfjob_episode{rlhf_job="j"} 2\nrlhfjob_num_episode{rlhf_job="j"} 4\n'


def _driver(phase: str = "Running", ip: str | None = "10.0.0.7", **meta: Any) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase}
    if ip:
        status["podIP"] = ip
    return {"metadata": {"name": "j-driver-g0", **meta}, "status": status}


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_a_running_driver_is_read_at_most_once_an_interval() -> None:
    urls: list[str] = []
    clock = _Clock()

    def fetch(url: str) -> str:
        urls.append(url)
        return TEXT

    reader = ProgressReader(interval=10, fetch=fetch, monotonic=clock)
    live = reader.read("ns", "j", _driver(), now=NOW)
    assert live is not None and (live.episode, live.num_episode) == (2, 4)
    assert urls == ["http://10.0.0.7:9090/metrics"]
    clock.t = 9.9
    assert reader.read("ns", "j", _driver(), now=NOW) is None  # not due
    assert reader.read("ns", "other", _driver(), now=NOW) is not None  # per job
    clock.t = 10.0
    assert reader.read("ns", "j", _driver(ip="fd00::7"), now=NOW) is not None
    assert urls[-1] == "http://[fd00::7]:9090/metrics"


def test_no_running_driver_is_not_read() -> None:
    def fetch(url: str) -> str:
        raise AssertionError(f"read {url}")

    reader = ProgressReader(interval=0, fetch=fetch)
    assert reader.read("ns", "j", None, now=NOW) is None
    assert reader.read("ns", "j", _driver(phase="Pending"), now=NOW) is None
    assert reader.read("ns", "j", _driver(ip=None), now=NOW) is None
    assert reader.read("ns", "j", _driver(deletionTimestamp="x"), now=NOW) is None


def test_a_failed_read_gives_nothing_and_waits_its_interval() -> None:
    calls: list[str] = []
    clock = _Clock()

    def fetch(url: str) -> str:
        calls.append(url)
        raise ConnectionRefusedError(111, "refused")

    reader = ProgressReader(interval=5, fetch=fetch, monotonic=clock)
    assert reader.read("ns", "j", _driver(), now=NOW) is None
    assert reader.read("ns", "j", _driver(), now=NOW) is None
    assert len(calls) == 1
    reader.forget("ns", "j")
    assert reader.read("ns", "j", _driver(), now=NOW) is None and len(calls) == 2
