"""Meet the gang through ``rendezvous.start`` and leave: startup failures without a job.

    python meet.py STARTUP_TIMEOUT      (the environment contract as for a worker)

Exits 0 once every process met and shut down, 75 on a StartupError (printed).
"""

from __future__ import annotations

import sys

from rlhfjob.comm import rendezvous
from rlhfjob.comm.env import WorkerEnv
from rlhfjob.comm.errors import StartupError
from rlhfjob_operator.contract import EXIT_RETRYABLE

if __name__ == "__main__":
    env = WorkerEnv.from_environ()
    try:
        session = rendezvous.start(env, startup_timeout=float(sys.argv[1]))
    except StartupError as exc:
        print(f"meet {env.name}: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_RETRYABLE) from None
    session.stop(graceful=True)
