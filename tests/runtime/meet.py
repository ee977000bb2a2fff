"""Meet the gang through ``bootstrap.start`` and leave: startup failures without a job.

    python meet.py STARTUP_TIMEOUT      (the environment contract as for a worker)

Exits 0 once every process met and shut down, 75 on a StartupError (printed).
"""

from __future__ import annotations

import sys

from rlhfjob.comm import bootstrap
from rlhfjob.comm.env import WorkerEnv
from rlhfjob_operator.contract import EXIT_RETRYABLE

if __name__ == "__main__":
    env = WorkerEnv.from_environ()
    try:
        bootstrap.start(env, startup_timeout=float(sys.argv[1]))
    except bootstrap.StartupError as exc:
        print(f"meet {env.name}: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_RETRYABLE) from None
    bootstrap.stop(graceful=True)
