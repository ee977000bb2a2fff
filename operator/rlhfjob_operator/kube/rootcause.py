"""Pure: which failed pod of a generation speaks for it (the root cause).

When one process of a gang dies, its peers fail after it (a broken collective, a
lost rendezvous), usually with the retryable exit 75. So the pod that decides is:

1. any pod that exited :data:`~rlhfjob_operator.contract.EXIT_PERMANENT` (78): a
   permanent error fails the job whichever pod reported it and whenever;
2. else the earliest-finished pod whose exit is not
   :data:`~rlhfjob_operator.contract.EXIT_RETRYABLE` (75): the first to die is
   the likeliest cause, its peers' 75s the consequence (a pod that failed
   without an exit code, evicted or lost, counts as a 75, as the restart policy
   reads it);
3. else (every failure is a 75) the earliest-finished one.

"Finished" is the latest ``finishedAt`` of the pod's terminated containers. A pod
that failed without one (evicted, lost, never started a container) sorts after
every pod that has one; ties, and pods without times, go by name, so the answer
never depends on the order the API listed the pods in.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from rlhfjob_operator.contract import EXIT_PERMANENT, EXIT_RETRYABLE
from rlhfjob_operator.kube.status import Pod, failed_exit, parse_time

__all__ = ["finished_at", "root_cause"]

_NEVER = dt.datetime.max.replace(tzinfo=dt.timezone.utc)


def finished_at(pod: Pod) -> dt.datetime | None:
    """When the pod's last terminated container finished; None when none says."""
    times = [
        t
        for cs in (pod.get("status") or {}).get("containerStatuses") or []
        if (t := parse_time(((cs.get("state") or {}).get("terminated") or {}).get("finishedAt")))
    ]
    return max(times, default=None)


def root_cause(failed: Iterable[Pod]) -> Pod | None:
    """The failed pod that speaks for the generation (the module's rules); None when
    ``failed`` is empty."""
    ordered = sorted(failed, key=lambda p: (finished_at(p) or _NEVER, p["metadata"]["name"]))
    codes = [failed_exit(p)[0] for p in ordered]
    for wanted in (lambda c: c == EXIT_PERMANENT, lambda c: c not in (None, EXIT_RETRYABLE)):
        for pod, code in zip(ordered, codes, strict=True):
            if wanted(code):
                return pod
    return ordered[0] if ordered else None
