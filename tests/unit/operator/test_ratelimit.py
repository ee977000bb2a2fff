"""The operator's client-side rate limit (kube/ratelimit.py), on a fake clock."""

from __future__ import annotations

import threading

import pytest

from rlhfjob_operator.kube.ratelimit import TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_a_burst_goes_at_once_then_qps_paces_the_rest() -> None:
    clock = Clock()
    bucket = TokenBucket(10, 3, clock=clock, sleep=clock.sleep)
    waits = [bucket.acquire() for _ in range(5)]
    assert waits[:3] == [0, 0, 0]
    assert waits[3:] == pytest.approx([0.1, 0.1])
    assert clock.now == pytest.approx(0.2)


def test_tokens_refill_up_to_the_burst_only() -> None:
    clock = Clock()
    bucket = TokenBucket(10, 2, clock=clock, sleep=clock.sleep)
    bucket.acquire(), bucket.acquire()
    clock.now += 60  # an idle minute saves 2 tokens, not 600
    assert [bucket.acquire() for _ in range(3)] == pytest.approx([0, 0, 0.1])


def test_waiters_queue_in_order_of_asking() -> None:
    """Reservations: the n-th waiter past the burst waits n / qps, however many ask at
    once (each reserves under the lock and sleeps outside it)."""
    clock = Clock()
    bucket = TokenBucket(4, 1, clock=clock, sleep=clock.sleep)
    assert [bucket.reserve() for _ in range(4)] == pytest.approx([0, 0.25, 0.5, 0.75])


def test_threads_share_one_bucket() -> None:
    bucket = TokenBucket(1000, 5)
    waits: list[float] = []
    lock = threading.Lock()

    def take() -> None:
        for _ in range(10):
            wait = bucket.acquire()
            with lock:
                waits.append(wait)

    threads = [threading.Thread(target=take) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(waits) == 40 and sum(w == 0 for w in waits) >= 5


def test_no_limit_when_qps_is_not_positive() -> None:
    clock = Clock()
    bucket = TokenBucket(0, 0, clock=clock, sleep=clock.sleep)
    assert [bucket.acquire() for _ in range(1000)] == [0] * 1000 and not clock.slept


def test_a_burst_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="a burst of 0 admits no request"):
        TokenBucket(5, 0)
