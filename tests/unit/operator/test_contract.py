"""The launcher <-> worker contract: one restart policy, one root cause, one set of names."""

from __future__ import annotations

import pytest

from rlhfjob_operator.contract import (
    DEFAULT_BACKOFF,
    EXIT_DISRUPTED,
    EXIT_PERMANENT,
    EXIT_RETRYABLE,
    Backoff,
    Final,
    Retry,
    describe_exit,
)
from rlhfjob_operator.local import root_cause
from rlhfjob_operator.spec.failure import attempt, first_match

FAST = Backoff(base_seconds=1, cap_seconds=4)


def next_attempt(
    code: int, restarts: int, limit: int, backoff: Backoff = DEFAULT_BACKOFF
) -> object:
    """What the default failure policy does after a failure with exit ``code``."""
    match = first_match((), names=(), code=code, conditions={})
    return attempt(match, restarts=restarts, limit=limit, backoff=backoff)


def test_retryable_failures_back_off_doubling_to_the_cap_then_stop_at_the_limit() -> None:
    delays = [next_attempt(EXIT_RETRYABLE, r, 5, backoff=FAST) for r in range(5)]
    assert delays == [Retry(1.0), Retry(2.0), Retry(4.0), Retry(4.0), Retry(4.0)]
    final = next_attempt(EXIT_RETRYABLE, 5, 5, backoff=FAST)
    assert isinstance(final, Final) and final.reason == "BackoffLimitExceeded"
    assert "backoffLimit (5)" in final.why


def test_the_default_backoff_is_the_job_controllers() -> None:
    assert next_attempt(1, 0, 3) == Retry(10.0)
    assert next_attempt(137, 2, 3) == Retry(40.0)
    assert Backoff().delay(20) == 300.0


def test_permanent_fails_at_once_and_disrupted_restarts_uncounted() -> None:
    final = next_attempt(EXIT_PERMANENT, 0, 9)
    assert isinstance(final, Final) and final.reason == "PermanentError"
    assert next_attempt(EXIT_DISRUPTED, 9, 9) == Retry(0.0, counted=False)


def test_a_negative_backoff_is_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        Backoff(base_seconds=-1)


def test_exits_are_described_with_their_meaning() -> None:
    assert describe_exit(78) == "exited with code 78 (permanent)"
    assert describe_exit(-9) == "was killed by SIGKILL"
    assert describe_exit(3) == "exited with code 3"
    # An abort names what most likely caused it, from subprocess (-6) or a runtime (134).
    for code, start in ((-6, "was killed by SIGABRT: "), (134, "exited with code 134: ")):
        assert describe_exit(code).startswith(start)
        assert "malformed bytes from a connection outside the job" in describe_exit(code)


def test_the_root_cause_is_the_earliest_failure_that_is_not_a_peer_noticing() -> None:
    # A worker is killed; the driver notices and exits 75 a moment later.
    ended = [
        (2.0, "the driver", EXIT_RETRYABLE, "driver"),
        (1.5, "worker value-0", -9, "value"),
        (2.5, "w", 0, "w"),
    ]
    # A signal reads as a container's exit, 128 + N.
    assert root_cause(ended) == (137, "worker value-0 was killed by SIGKILL", "value")
    # Seen in the other order, the same answer.
    assert root_cause(list(reversed(ended))) == root_cause(ended)


def test_a_permanent_exit_anywhere_fails_the_gang_even_when_a_75_came_first() -> None:
    ended = [
        (1.0, "worker actor-0", EXIT_RETRYABLE, "actor"),
        (3.0, "the driver", EXIT_PERMANENT, "driver"),
    ]
    assert root_cause(ended) == (
        EXIT_PERMANENT,
        "the driver exited with code 78 (permanent)",
        "driver",
    )


def test_only_75s_name_the_earliest_and_success_is_no_cause() -> None:
    ended = [(2.0, "b", EXIT_RETRYABLE, "b"), (1.0, "a", EXIT_RETRYABLE, "a")]
    assert root_cause(ended) == (EXIT_RETRYABLE, "a exited with code 75 (retryable)", "a")
    assert root_cause([(1.0, "the driver", 0, "driver"), (1.1, "w", 0, "w")]) is None
