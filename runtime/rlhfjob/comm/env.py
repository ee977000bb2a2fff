"""The environment contract of one process, validated, and what each process publishes.

``WorkerEnv.from_environ`` reads the names of ``rlhfjob_operator.contract``; a
missing or malformed variable is a ValueError naming it (the worker exits 78).
``Peer`` is the record every process publishes at the rendezvous; the driver
places modules by it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from rlhfjob_operator.contract import (
    DRIVER_ROLE,
    ENV_CHECKPOINT_DIR,
    ENV_JOB_NAME,
    ENV_JOB_SECRET,
    ENV_MASTER_ADDR,
    ENV_MASTER_PORT,
    ENV_METRICS_PORT,
    ENV_MODELS,
    ENV_RANK,
    ENV_REPLICA,
    ENV_RESTART_GENERATION,
    ENV_ROLE,
    ENV_SPEC,
    ENV_WORLD_SIZE,
    LOG_INFO,
)
from rlhfjob_operator.contract import (
    log_level as read_log_level,
)

__all__ = ["MIN_SECRET_CHARS", "Peer", "WorkerEnv"]

# The launchers draw 32 random bytes (43 characters); anything much shorter is guessable.
MIN_SECRET_CHARS = 16


@dataclasses.dataclass(frozen=True, kw_only=True)
class WorkerEnv:
    """The environment contract of one process, validated."""

    job_name: str
    role: str
    models: tuple[str, ...]
    replica: int
    rank: int
    world_size: int
    master_addr: str
    master_port: int
    spec_path: str
    checkpoint_dir: str
    metrics_port: int
    restart_generation: int
    # Never printed: a repr of the environment must not leak it.
    secret: str = dataclasses.field(repr=False)
    # RLHFJOB_LOG_LEVEL: info hides third-party startup noise (rlhfjob.comm.quiet).
    log_level: str = LOG_INFO

    @property
    def is_driver(self) -> bool:
        return self.role == DRIVER_ROLE

    @property
    def name(self) -> str:
        """The RPC name: ``driver`` or ``<role>-<replica>``."""
        return DRIVER_ROLE if self.is_driver else f"{self.role}-{self.replica}"

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> WorkerEnv:
        """Read the contract; a missing or malformed variable is a ValueError naming it."""
        env = os.environ if environ is None else environ

        def need(key: str) -> str:
            value = env.get(key)
            if value is None or (value == "" and key not in (ENV_MODELS,)):
                raise ValueError(
                    f"environment variable {key} is not set; rlhfjob workers are started by "
                    "`rlhfjob run job.yaml` or by the operator, which set the whole contract"
                )
            return value

        def number(key: str, default: str | None = None) -> int:
            raw = need(key) if default is None else (env.get(key) or default)
            try:
                return int(raw)
            except ValueError:
                raise ValueError(f"environment variable {key}={raw!r} is not an integer") from None

        rank, world = number(ENV_RANK), number(ENV_WORLD_SIZE)
        if not 0 <= rank < world:
            raise ValueError(
                f"{ENV_RANK}={rank} is outside 0..{ENV_WORLD_SIZE}-1 ({ENV_WORLD_SIZE}={world})"
            )
        models = tuple(m for m in env.get(ENV_MODELS, "").split(",") if m)
        role = need(ENV_ROLE)
        if (role == DRIVER_ROLE) != (rank == 0):
            raise ValueError(
                f"{ENV_ROLE}={role} with {ENV_RANK}={rank}: the driver and only it is rank 0"
            )
        if role != DRIVER_ROLE and not models:
            raise ValueError(f"{ENV_MODELS} is empty for worker {role}; it names the models hosted")
        secret = env.get(ENV_JOB_SECRET, "")
        if not secret:
            raise ValueError(
                f"environment variable {ENV_JOB_SECRET} is not set: it is the job's rendezvous "
                "secret, without which this process cannot prove it belongs to the job (the "
                "operator gives every pod the Secret <job>-rendezvous, `rlhfjob run` makes one)"
            )
        if len(secret) < MIN_SECRET_CHARS:
            raise ValueError(
                f"environment variable {ENV_JOB_SECRET} has {len(secret)} characters; use at "
                f"least {MIN_SECRET_CHARS} random ones (e.g. python -c 'import secrets; "
                "print(secrets.token_urlsafe(32))')"
            )
        return cls(
            job_name=need(ENV_JOB_NAME),
            role=role,
            models=models,
            replica=number(ENV_REPLICA),
            rank=rank,
            world_size=world,
            master_addr=need(ENV_MASTER_ADDR),
            master_port=number(ENV_MASTER_PORT),
            spec_path=need(ENV_SPEC),
            checkpoint_dir=env.get(ENV_CHECKPOINT_DIR, ""),
            metrics_port=number(ENV_METRICS_PORT, "0"),
            restart_generation=number(ENV_RESTART_GENERATION, "0"),
            secret=secret,
            log_level=read_log_level(env),
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class Peer:
    """What every process publishes at rendezvous; the driver places modules by it."""

    rank: int
    name: str
    role: str
    replica: int
    models: tuple[str, ...]
    pid: int
    host: str
    cuda: bool
    # Every IP address of the process's host or pod: its listeners admit only these
    # (rlhfjob.comm.admission).
    addresses: tuple[str, ...] = ()

    def describe(self) -> str:
        return (
            f"{self.name} (role {self.role}, replica {self.replica}, pid {self.pid} on {self.host})"
        )
