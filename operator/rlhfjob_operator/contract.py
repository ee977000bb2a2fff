"""The launcher <-> worker contract, in one place: no torch, no kopf, no other rlhfjob import.

Both launchers (the operator: one pod per worker; ``rlhfjob run``: one local
process per worker) start :data:`WORKER_COMMAND` with the environment below,
and act on its exit code through ``runPolicy.failurePolicy``
(``rlhfjob_operator.spec.failure``); the runtime reads the
same names. Nothing else in the code base spells these strings.

The environment of every process, driver included:

``RLHFJOB_JOB_NAME``
    metadata.name of the RLHFJob.
``RLHFJOB_ROLE``
    :data:`DRIVER_ROLE`, or the worker's role: the model name for a lone model,
    or for a colocation group a DNS-label-safe name joined from its models
    (``rlhfjob_operator.plan.role_name``).
``RLHFJOB_MODELS``
    Comma-separated names of the models this worker hosts, in colocation-group
    order; empty for the driver.
``RLHFJOB_REPLICA``
    Replica index of this worker within its role, from 0 (0 for the driver).
``RANK``, ``WORLD_SIZE``
    Global rank (driver 0) and 1 + the number of model workers.
``MASTER_ADDR``, ``MASTER_PORT``
    The driver's address and rendezvous port (torch.distributed's env://).
    On Kubernetes the driver's DNS name through the job's headless Service;
    locally 127.0.0.1.
``RLHFJOB_SPEC``
    Path of the job's manifest as YAML: the mounted ConfigMap on Kubernetes,
    a file locally.
``RLHFJOB_CHECKPOINT_DIR``
    Directory for checkpoints (spec.checkpoint.mountPath in a pod); it wins
    over runtime.data_checkpoint_path.
``RLHFJOB_METRICS_PORT``, ``RLHFJOB_METRICS_HOST``
    Where the driver serves Prometheus metrics (port 0: none; host default
    0.0.0.0, ``rlhfjob run`` sets 127.0.0.1).
``RLHFJOB_RESTART_GENERATION``
    0 on the first start, +1 whenever the gang is re-created; a gang above 0
    resumes from the last checkpoint when runtime.enable_resume_training is set.
``RLHFJOB_JOB_SECRET``
    The job's rendezvous secret (see ``rlhfjob.comm.signing``). Never a literal
    in a manifest: a pod takes it from the Secret ``<job>-rendezvous`` through
    ``secretKeyRef``; ``rlhfjob run`` draws a fresh one for every start.
``RLHFJOB_TERMINATION_LOG``
    Where the driver writes its last progress line (the kubelet's
    terminationMessagePath; default :data:`TERMINATION_LOG`).
``RLHFJOB_LOG_LEVEL``
    ``info`` (the default, also when empty) keeps third-party noise out of
    the output: gloo's connection lines (:data:`NOISE_PATTERN`, one per
    process and group) and torch's deprecation warning about its own RPC
    internals; ``debug`` lets everything through. ``rlhfjob run`` passes it
    on from its own environment; anything else is refused by
    :func:`log_level`, naming the variable (the worker exits 78).
``RLHFJOB_TIMING``
    Optional, from the launcher's own environment: when set (not 0), every
    process prints a ``rlhfjob timing:`` line to stderr per start-up phase
    (``rlhfjob.timing``); ``rlhfjob run`` marks each spawn too.

Exit codes (sysexits where one fits):

==  =====================================================================
0   the driver finished (a worker: its driver finished)
75  retryable (EX_TEMPFAIL): a peer died or never came, the rendezvous was
    lost, a value refused for want of the job's secret
78  permanent (EX_CONFIG): bad spec or config, a flow error, an exception in
    user code; a restart would repeat it
79  disrupted: the process was asked to stop (SIGTERM: a drain, an eviction,
    a preemption, a suspend) and stopped at a safe point
==  =====================================================================
"""

from __future__ import annotations

import dataclasses
import os
import signal
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "COMMON_LABELS",
    "DEFAULT_BACKOFF",
    "DEFAULT_MASTER_PORT",
    "DEFAULT_METRICS_PORT",
    "DRIVER_ROLE",
    "ENV_CHECKPOINT_DIR",
    "ENV_JOB_NAME",
    "ENV_JOB_SECRET",
    "ENV_LOG_LEVEL",
    "ENV_MASTER_ADDR",
    "ENV_MASTER_PORT",
    "ENV_METRICS_HOST",
    "ENV_METRICS_PORT",
    "ENV_MODELS",
    "ENV_RANK",
    "ENV_REPLICA",
    "ENV_RESTART_GENERATION",
    "ENV_ROLE",
    "ENV_SPEC",
    "ENV_STOP_GRACE",
    "ENV_TERMINATION_LOG",
    "ENV_TIMING",
    "ENV_WORLD_SIZE",
    "EXIT_DISRUPTED",
    "EXIT_OK",
    "EXIT_PERMANENT",
    "EXIT_RETRYABLE",
    "GPU_RESOURCE",
    "LOG_DEBUG",
    "LOG_INFO",
    "NOISE_PATTERN",
    "OWN_KEY_PREFIX",
    "RESERVED_ENV",
    "RESERVED_ENV_PREFIX",
    "TERMINATION_LOG",
    "WORKER_COMMAND",
    "Backoff",
    "EntrypointNotFound",
    "Final",
    "Retry",
    "abort_hint",
    "describe_exit",
    "entrypoint_path",
    "log_level",
    "shm_prefix",
]

ENV_JOB_NAME = "RLHFJOB_JOB_NAME"
ENV_ROLE = "RLHFJOB_ROLE"
ENV_MODELS = "RLHFJOB_MODELS"
ENV_REPLICA = "RLHFJOB_REPLICA"
ENV_RANK = "RANK"
ENV_WORLD_SIZE = "WORLD_SIZE"
ENV_MASTER_ADDR = "MASTER_ADDR"
ENV_MASTER_PORT = "MASTER_PORT"
ENV_SPEC = "RLHFJOB_SPEC"
ENV_CHECKPOINT_DIR = "RLHFJOB_CHECKPOINT_DIR"
ENV_METRICS_PORT = "RLHFJOB_METRICS_PORT"
ENV_METRICS_HOST = "RLHFJOB_METRICS_HOST"
ENV_RESTART_GENERATION = "RLHFJOB_RESTART_GENERATION"
ENV_JOB_SECRET = "RLHFJOB_JOB_SECRET"
ENV_TERMINATION_LOG = "RLHFJOB_TERMINATION_LOG"
ENV_LOG_LEVEL = "RLHFJOB_LOG_LEVEL"
LOG_INFO = "info"
LOG_DEBUG = "debug"
# The start of a line that third-party code prints and that tells a user nothing: gloo's
# report for every process of every group it connects. Dropped at LOG_INFO by the worker
# (rlhfjob.comm.quiet, during startup) and by `rlhfjob run` (worker output, also later
# groups); pods' logs keep a worker's later groups' lines.
NOISE_PATTERN = r"\[Gloo\] Rank \d+ is connected to \d+ peer ranks\."
ENV_TIMING = "RLHFJOB_TIMING"
# Seconds a SIGTERMed process waits for the gang to stop before it exits by itself
# (rlhfjob.comm.stopping); the operator sets it under the pod's grace period.
ENV_STOP_GRACE = "RLHFJOB_STOP_GRACE_S"
TERMINATION_LOG = "/dev/termination-log"

# Set by the launcher: a user's spec.env may neither set these nor any RLHFJOB_* name.
RESERVED_ENV = (ENV_RANK, ENV_WORLD_SIZE, ENV_MASTER_ADDR, ENV_MASTER_PORT, "LOCAL_RANK")
RESERVED_ENV_PREFIX = "RLHFJOB_"
# Pod labels and annotations the operator sets (kube/names.py): a user's podTemplate,
# driver or models.<name>.pod may set none of these keys, nor any rlhf.dev/* key.
OWN_KEY_PREFIX = "rlhf.dev/"
COMMON_LABELS = {
    "app.kubernetes.io/name": "rlhfjob",
    "app.kubernetes.io/managed-by": "rlhfjob-operator",
}

DRIVER_ROLE = "driver"
# What every process of a job runs; its role comes from the environment.
WORKER_COMMAND: tuple[str, ...] = ("python", "-m", "rlhfjob.worker")
GPU_RESOURCE = "nvidia.com/gpu"
DEFAULT_MASTER_PORT = 29500
DEFAULT_METRICS_PORT = 9090

EXIT_OK = 0
EXIT_RETRYABLE = 75
EXIT_PERMANENT = 78
EXIT_DISRUPTED = 79

_EXIT_MEANING = {
    EXIT_OK: "success",
    EXIT_RETRYABLE: "retryable",
    EXIT_PERMANENT: "permanent",
    EXIT_DISRUPTED: "disrupted",
}


def describe_exit(code: int) -> str:
    """``exited with code 78 (permanent)`` / ``was killed by SIGKILL``, for messages.

    A negative code is a signal, as ``subprocess`` reports it; 128+N from a
    container runtime is reported as the code it is. An abort gets
    :func:`abort_hint` after it.
    """
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}{abort_hint(code)}"
        except ValueError:
            return f"was killed by signal {-code}"
    meaning = _EXIT_MEANING.get(code)
    return f"exited with code {code}" + (f" ({meaning})" if meaning else "") + abort_hint(code)


def abort_hint(code: int) -> str:
    """What an abort (SIGABRT: -6 from ``subprocess``, 134 from a container runtime)
    most likely was, to append to a message; "" for any other code. gloo's and
    TensorPipe's native listeners abort the process on malformed bytes from whoever
    connects (SECURITY.md), which the job's own peers never send."""
    if code not in (-signal.SIGABRT, 128 + signal.SIGABRT):
        return ""
    return (
        ": native code aborted, as TensorPipe does on malformed bytes from a connection "
        "outside the job (an attack on the job's ports? see SECURITY.md)"
    )


def log_level(environ: Mapping[str, str]) -> str:
    """:data:`LOG_INFO` or :data:`LOG_DEBUG` from ``RLHFJOB_LOG_LEVEL``; unset or empty is
    info, case is ignored, anything else a ValueError naming the variable and its values."""
    raw = environ.get(ENV_LOG_LEVEL, "").strip().lower() or LOG_INFO
    if raw not in (LOG_INFO, LOG_DEBUG):
        raise ValueError(
            f"environment variable {ENV_LOG_LEVEL}={environ[ENV_LOG_LEVEL]!r} is neither "
            f"{LOG_INFO!r} (the default: third-party startup noise hidden) nor {LOG_DEBUG!r} "
            "(everything shown)"
        )
    return raw


def shm_prefix(job_name: str, master_port: int) -> str:
    """The name prefix of one gang's shared-memory segments (``rlhfjob.comm.shm``).

    ``_`` never occurs in a job name (a DNS subdomain), so no job's prefix starts
    another's; the rendezvous port tells apart two gangs of one name on one host.
    """
    return f"rlhfjob_{job_name}_{master_port}_"


class EntrypointNotFound(ValueError):
    """spec.entrypoint.file names no file; the message says where it was looked for."""


def entrypoint_path(file: str | None, spec_path: str) -> Path | None:
    """The entrypoint file (None when the entrypoint is a module or an engine).

    A relative path is looked up next to the spec, then in the working
    directory; :class:`EntrypointNotFound` names both places when it is in neither.
    """
    if file is None:
        return None
    path = Path(file)
    if not path.is_absolute():
        beside = Path(spec_path).resolve().parent / path
        path = beside if beside.is_file() else Path(os.getcwd()) / path
    if not path.is_file():
        raise EntrypointNotFound(
            f"spec.entrypoint.file {file!r} does not exist (looked next to {spec_path} "
            "and in the working directory)"
        )
    return path


# --- the restart policy -----------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class Backoff:
    """Delay before the ``restart``-th re-creation of a gang: base * 2**(restart-1), capped.

    The batch Job controller's shape (10 s doubling, capped); both launchers
    take theirs from their own flags, defaulting to :data:`DEFAULT_BACKOFF`.
    """

    base_seconds: float = 10.0
    cap_seconds: float = 300.0

    def __post_init__(self) -> None:
        if self.base_seconds < 0 or self.cap_seconds < 0:
            raise ValueError(
                f"backoff seconds must not be negative (base {self.base_seconds}, "
                f"cap {self.cap_seconds})"
            )

    def delay(self, restart: int) -> float:
        return float(min(self.base_seconds * 2 ** max(restart - 1, 0), self.cap_seconds))


DEFAULT_BACKOFF = Backoff()


@dataclasses.dataclass(frozen=True)
class Retry:
    """Start the gang again after ``delay`` seconds; ``counted``: it spends a restart."""

    delay: float
    counted: bool = True


@dataclasses.dataclass(frozen=True)
class Final:
    """Do not start the gang again: ``reason`` is a CamelCase word, ``why`` a phrase."""

    reason: str
    why: str
