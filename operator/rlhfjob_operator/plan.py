"""Pure: an RLHFJob spec -> the workers that run it, and the environment each one gets.

Both launchers use this module: the operator (one pod per worker, see kube/)
and ``rlhfjob run`` (one local process per worker). A job has a **driver**
(rank 0), which runs the user's entrypoint, and one **worker per model
replica**; models in one ``runtime.colocation`` group share a worker per
replica (so they need the same ``num_replica``). Roles are ranked in sorted
order of their names (the API server returns maps sorted, so every reader
agrees), replicas of a role take consecutive ranks.

The environment each worker gets is the contract of
``rlhfjob_operator.contract`` (:meth:`JobPlan.env`), which names every variable,
exit code and the restart policy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rlhfjob_operator.contract import (
    DEFAULT_MASTER_PORT,
    DEFAULT_METRICS_PORT,
    DRIVER_ROLE,
    ENV_CHECKPOINT_DIR,
    ENV_JOB_NAME,
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
)
from rlhfjob_operator.spec import (
    ModelSpec,
    PodSettings,
    ResourceRequirements,
    RLHFJob,
    Toleration,
)
from rlhfjob_operator.spec.merge import merge_pod_settings
from rlhfjob_operator.spec.pod import OWN_VOLUMES

__all__ = [
    "JobPlan",
    "Worker",
    "dns_label",
    "plan_job",
    "role_name",
]

_ROLE_MAX = 50


def role_name(models: Sequence[str]) -> str:
    """The role of a worker hosting ``models``: the model's own name for one model; for a
    colocation group, its names joined by '-' with '_' turned into '-', shortened with a
    hash suffix past 50 characters (it must fit in a DNS label with the replica index)."""
    if len(models) == 1:
        return models[0]
    joined = "-".join(name.replace("_", "-") for name in models)
    if len(joined) <= _ROLE_MAX:
        return joined
    digest = hashlib.sha1(joined.encode()).hexdigest()[:8]
    return f"{joined[: _ROLE_MAX - 9].rstrip('-')}-{digest}"


def dns_label(role: str) -> str:
    """``role`` as it appears in pod names and hostnames ('_' is not allowed there)."""
    return role.replace("_", "-")


@dataclass(frozen=True, kw_only=True)
class Worker:
    """One process of the job: the driver, or one replica of a role."""

    role: str
    models: tuple[str, ...]
    replica: int
    rank: int
    num_gpu: int = 0
    num_cpu: int = 0
    image: str
    # Every pod setting of the role, merged (spec/merge.py); its image is ``image``'s source.
    pod: PodSettings = field(default_factory=lambda: PodSettings.model_validate({}))

    @property
    def node_selector(self) -> Mapping[str, str]:
        return self.pod.node_selector

    @property
    def tolerations(self) -> tuple[Toleration, ...]:
        return tuple(self.pod.tolerations)

    @property
    def resources(self) -> ResourceRequirements | None:
        return self.pod.resources

    @property
    def is_driver(self) -> bool:
        return self.role == DRIVER_ROLE

    @property
    def hostname(self) -> str:
        """DNS label of this worker within the job: ``driver`` or ``<role>-<replica>``."""
        return DRIVER_ROLE if self.is_driver else f"{dns_label(self.role)}-{self.replica}"


@dataclass(frozen=True, kw_only=True)
class JobPlan:
    """The workers of a job, driver first, ranks 0..world_size-1 in order."""

    job_name: str
    workers: tuple[Worker, ...]
    master_port: int = DEFAULT_MASTER_PORT
    metrics_port: int = DEFAULT_METRICS_PORT

    @property
    def world_size(self) -> int:
        return len(self.workers)

    @property
    def driver(self) -> Worker:
        return self.workers[0]

    def names_of(self, role: str) -> frozenset[str]:
        """``role`` and the models its workers host: what a failurePolicy rule's
        ``onExitCodes.role`` may name to match them."""
        return frozenset({role, *(m for w in self.workers if w.role == role for m in w.models)})

    def env(
        self,
        worker: Worker,
        *,
        master_addr: str,
        spec_path: str,
        checkpoint_dir: str,
        restart_generation: int,
        metrics_port: int | None = None,
    ) -> dict[str, str]:
        """The environment contract of ``worker`` (``rlhfjob_operator.contract``), as strings.

        ``metrics_port`` overrides the plan's, for launchers whose workers share one host.
        """
        return {
            ENV_JOB_NAME: self.job_name,
            ENV_ROLE: worker.role,
            ENV_MODELS: ",".join(worker.models),
            ENV_REPLICA: str(worker.replica),
            ENV_RANK: str(worker.rank),
            ENV_WORLD_SIZE: str(self.world_size),
            ENV_MASTER_ADDR: master_addr,
            ENV_MASTER_PORT: str(self.master_port),
            ENV_SPEC: spec_path,
            ENV_CHECKPOINT_DIR: checkpoint_dir,
            ENV_METRICS_PORT: str(self.metrics_port if metrics_port is None else metrics_port),
            ENV_RESTART_GENERATION: str(restart_generation),
        }


# What a pod has one of, so a colocation group's models must agree on: field, its name.
_ONE_PER_POD = {
    "image": "images",
    "service_account_name": "serviceAccountNames",
    "priority_class_name": "priorityClassNames",
    "affinity": "affinities",
}


def _merge_settings(role: str, settings: Sequence[PodSettings]) -> PodSettings:
    """One PodSettings for a colocation group, merged in the group's model order.

    Two models that ask for different images, service accounts, priority classes,
    affinities, nodeSelector values or resources are an error (they share one pod);
    other settings merge as spec/merge.py says.
    """
    scalars: dict[str, object] = {}
    selector: dict[str, str] = {}
    requests: dict[str, str | int] = {}
    limits: dict[str, str | int] = {}
    for item in settings:
        for name, what in _ONE_PER_POD.items():
            value = getattr(item, name)
            if value is not None and scalars.setdefault(name, value) != value:
                raise ValueError(
                    f"colocation group {role!r}: its models ask for different {what} "
                    f"({scalars[name]!r}, {value!r}); they share one pod, so use one"
                )
        for key, value in item.node_selector.items():
            if selector.setdefault(key, value) != value:
                raise ValueError(
                    f"colocation group {role!r}: nodeSelector {key!r} differs between its models"
                )
        if item.resources is not None:
            for mine, theirs, kind in (
                (requests, item.resources.requests, "requests"),
                (limits, item.resources.limits, "limits"),
            ):
                for resource, quantity in theirs.items():
                    if mine.setdefault(resource, quantity) != quantity:
                        raise ValueError(
                            f"colocation group {role!r}: resources.{kind}.{resource} differs "
                            "between its models; they share one pod"
                        )
    return merge_pod_settings(*settings)


def _check_mounts(role: str, pod: PodSettings, *, checkpoint_path: str) -> None:
    """Raise ValueError (naming the role) for a volumeMount that names none of the role's
    volumes, or that takes the checkpoint's mountPath: the API server would refuse the pod
    only when the operator creates it, long after the job was accepted."""
    volumes = {v.name for v in pod.volumes} | set(OWN_VOLUMES)
    for mount in pod.volume_mounts:
        if mount.name not in volumes:
            raise ValueError(
                f"role {role!r}: volumeMounts {mount.mount_path!r} names volume {mount.name!r}, "
                "which neither spec.podTemplate.volumes nor the role's own volumes define"
            )
        if mount.mount_path == checkpoint_path:
            raise ValueError(
                f"role {role!r}: volumeMounts {mount.mount_path!r} is spec.checkpoint.mountPath; "
                "choose another mountPath"
            )


def _roles(job: RLHFJob) -> list[tuple[str, tuple[str, ...]]]:
    """(role, models) for every worker role, sorted by role name."""
    spec = job.spec
    grouped = {name for group in spec.runtime.colocation for name in group}
    roles = [(role_name(group), tuple(group)) for group in spec.runtime.colocation]
    roles += [(name, (name,)) for name in spec.models if name not in grouped]
    taken: dict[str, tuple[str, ...]] = {}
    for role, models in roles:
        dns = dns_label(role)
        if dns == DRIVER_ROLE or dns in taken:
            raise ValueError(
                f"role {role!r} (models {list(models)}) clashes with "
                f"{list(taken.get(dns, ()) or [DRIVER_ROLE])}; rename a model"
            )
        taken[dns] = models
    return sorted(roles)


def plan_job(
    job: RLHFJob,
    *,
    master_port: int = DEFAULT_MASTER_PORT,
    metrics_port: int = DEFAULT_METRICS_PORT,
) -> JobPlan:
    """The driver and every model worker of ``job`` with ranks, resources and placement.

    Each worker's pod settings are spec.nodeSelector, tolerations and env, under
    spec.podTemplate, under the role's own (spec.driver, models.<name>.pod; a colocation
    group's models merged in order), as spec/merge.py merges them. Raises ValueError
    (naming the group or role and the field) when a colocation group's models ask for
    placements that cannot share one pod, or a volumeMount names no volume.
    """
    spec = job.spec
    # spec.nodeSelector, tolerations and env: the oldest layer, under spec.podTemplate.
    base = PodSettings.model_validate(
        spec.model_dump(mode="json", include={"node_selector", "tolerations", "env"})
    )

    def placed(role: str, settings: PodSettings | None) -> dict[str, Any]:
        pod = merge_pod_settings(base, spec.pod_template, settings)
        _check_mounts(role, pod, checkpoint_path=spec.checkpoint.mount_path)
        return {"image": pod.image or spec.image, "pod": pod}

    driver = placed(DRIVER_ROLE, spec.driver)
    workers = [Worker(role=DRIVER_ROLE, models=(), replica=0, rank=0, **driver)]
    for role, models in _roles(job):
        specs: list[ModelSpec] = [spec.models[name] for name in models]
        settings = [s.pod for s in specs if s.pod is not None]
        merged = (
            _merge_settings(role, settings)
            if len(models) > 1
            else (settings[0] if settings else None)
        )
        for replica in range(specs[0].num_replica):
            workers.append(
                Worker(
                    role=role,
                    models=models,
                    replica=replica,
                    rank=len(workers),
                    # Colocated models time-share one set of devices, as in ChatLearn.
                    num_gpu=max(s.num_gpu for s in specs),
                    num_cpu=max(s.num_cpu for s in specs),
                    **placed(role, merged),
                )
            )
    return JobPlan(
        job_name=job.name,
        workers=tuple(workers),
        master_port=master_port,
        metrics_port=metrics_port,
    )
