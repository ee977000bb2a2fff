"""The exceptions of a process's startup; both mean a restart of the gang can succeed.

The worker turns either into exit 75 (``EXIT_RETRYABLE``): the cause (a peer
that never came, a process of another job or of an earlier gang, an intruder)
is outside the spec, a restart makes a new rendezvous, and the backoff limit
bounds the retries.
"""

from __future__ import annotations

__all__ = ["RendezvousRefused", "StartupError"]


class StartupError(RuntimeError):
    """Peers did not meet in time, or could not start gloo or RPC together; retryable."""


class RendezvousRefused(StartupError):
    """A rendezvous value failed the job-secret check; retryable (see ``rlhfjob.comm.signing``)."""
