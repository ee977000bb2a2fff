"""RLHFJOB_LOG_LEVEL and the startup filter: noise lines dropped at info, all else kept.

The filter works on file descriptors, so it is written to with ``os.write``
(as C++ writes) and read back through pytest's fd capture.
"""

from __future__ import annotations

import os
import sys
import warnings

import pytest

from rlhfjob.comm.quiet import quiet_startup
from rlhfjob_operator.contract import ENV_LOG_LEVEL, LOG_DEBUG, LOG_INFO, log_level

GLOO = (
    b"[Gloo] Rank 3 is connected to 6 peer ranks. Expected number of connected peer ranks is : 6\n"
)
DEPRECATED = "You are using a Backend <class 'ProcessGroupGloo'> as a ProcessGroup. deprecated"


@pytest.mark.parametrize(
    ("value", "level"),
    [(None, LOG_INFO), ("", LOG_INFO), ("INFO", LOG_INFO), (" debug", LOG_DEBUG)],
)
def test_log_level_defaults_to_info_and_ignores_case(value: str | None, level: str) -> None:
    assert log_level({} if value is None else {ENV_LOG_LEVEL: value}) == level


def test_an_unknown_log_level_names_the_variable_and_the_choices() -> None:
    with pytest.raises(ValueError, match=rf"{ENV_LOG_LEVEL}='verbose' is neither 'info'.*'debug'"):
        log_level({ENV_LOG_LEVEL: "verbose"})


def _noisy_startup() -> None:
    os.write(1, b"before " + GLOO + b"kept on stdout\n")
    os.write(2, GLOO + b"kept on stderr\n")
    warnings.warn(DEPRECATED, FutureWarning, stacklevel=1)
    os.write(1, b"no newline at the end")


def test_info_drops_the_noise_lines_and_keeps_the_rest(capfd: pytest.CaptureFixture[str]) -> None:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet_startup(LOG_INFO):
            _noisy_startup()
    out, err = capfd.readouterr()
    # A noise pattern inside a line is no noise line: it starts the line or nothing.
    assert out == "before [Gloo]" + GLOO.decode()[6:] + "kept on stdout\nno newline at the end"
    assert err == "kept on stderr\n"
    assert not [w for w in seen if "as a ProcessGroup" in str(w.message)]
    # Both descriptors point where they did: a later write is no longer filtered.
    os.write(1, GLOO)
    assert capfd.readouterr().out == GLOO.decode()
    sys.stdout.flush()


def test_debug_changes_nothing(capfd: pytest.CaptureFixture[str]) -> None:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet_startup(LOG_DEBUG):
            _noisy_startup()
    out, err = capfd.readouterr()
    assert out.count("[Gloo]") == 1 and err.count("[Gloo]") == 1
    assert [w for w in seen if "as a ProcessGroup" in str(w.message)]
