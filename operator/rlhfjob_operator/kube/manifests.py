"""Pure builders: an RLHFJob and its plan -> the Kubernetes objects that run it.

Every object is owned by the RLHFJob (``ownerReferences`` with
``controller: true``), so deleting the job garbage-collects them all.

Pods run non-root (uid/gid 1000, fsGroup 1000 so a PVC is writable), drop all
capabilities, forbid privilege escalation, use the runtime's default seccomp
profile and a read-only root filesystem; the runtime writes only to emptyDirs
at ``/tmp``, ``/dev/shm`` (memory-backed: torch's shared-memory tensors) and
the checkpoint directory (an emptyDir unless a PVC is named). They get no
ServiceAccount token: workers never talk to the API server.

The NetworkPolicy selects this job's pods and admits (1) any port from this
job's own pods: the rendezvous port and torch RPC's listeners, which TensorPipe
opens on ephemeral ports, so they cannot be listed; and (2) the metrics port
from anywhere, so Prometheus in another namespace can scrape it (it serves
read-only metrics). Nothing else reaches the pods.

The job's rendezvous token lives in a Secret of its own (``<job>-rendezvous``,
key ``token``), immutable, owned by the job; pods read it as
``RLHFJOB_JOB_SECRET`` through ``secretKeyRef``, so it never appears in a pod
spec, and the operator, which may create Secrets but not read them, never
needs it again.
"""

from __future__ import annotations

from typing import Any

import yaml

from rlhfjob_operator.contract import ENV_JOB_SECRET, ENV_STOP_GRACE, GPU_RESOURCE, WORKER_COMMAND
from rlhfjob_operator.kube.gang import pod_group_spec, schedule_pod
from rlhfjob_operator.kube.kueue import label_pod
from rlhfjob_operator.kube.names import (
    ANNOTATION_MODELS,
    LABEL_GENERATION,
    LABEL_JOB,
    SECRET_KEY,
    common_labels,
    configmap_name,
    job_selector,
    network_policy_name,
    pod_group_name,
    pod_hostname,
    pod_labels,
    pod_name,
    secret_name,
    service_name,
)
from rlhfjob_operator.plan import JobPlan, Worker
from rlhfjob_operator.spec import API_VERSION, KIND, PodSettings, RLHFJob

__all__ = [
    "RUN_AS",
    "SPEC_DIR",
    "SPEC_FILE",
    "build_configmap",
    "build_gang",
    "build_network_policy",
    "build_pod",
    "build_pod_group",
    "build_secret",
    "build_service",
    "master_addr",
    "owner_reference",
]

SPEC_DIR = "/etc/rlhfjob"
SPEC_FILE = "job.yaml"
RUN_AS = 1000
_RENDEZVOUS = "rendezvous"
_METRICS = "metrics"


def owner_reference(job: RLHFJob) -> dict[str, Any]:
    """The job as controller of an object; needs the job's uid (so: a job read from the API)."""
    if not job.metadata.uid:
        raise ValueError(f"RLHFJob {job.name!r} has no metadata.uid; read it from the API server")
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": job.name,
        "uid": job.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _meta(job: RLHFJob, name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": job.namespace,
        "labels": labels,
        "ownerReferences": [owner_reference(job)],
    }


def master_addr(job: RLHFJob, plan: JobPlan, *, generation: int) -> str:
    """The driver's DNS name through the headless Service (hostname.subdomain), one per
    restart generation (kube/names.py says why)."""
    host = pod_hostname(plan.driver, generation=generation)
    return f"{host}.{service_name(job.name)}.{job.namespace}.svc"


def _resources(worker: Worker) -> dict[str, Any]:
    requests: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    if worker.resources is not None:
        requests.update(worker.resources.requests)
        limits.update(worker.resources.limits)
    if worker.num_cpu and "cpu" not in requests:
        requests["cpu"] = str(worker.num_cpu)
    if worker.num_gpu:
        # Extended resources: requests must equal limits.
        requests[GPU_RESOURCE] = limits[GPU_RESOURCE] = str(worker.num_gpu)
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def _checkpoint_volume(job: RLHFJob) -> dict[str, Any]:
    ckpt = job.spec.checkpoint
    if ckpt.persistent_volume_claim is not None:
        return {
            "name": "checkpoint",
            "persistentVolumeClaim": {"claimName": ckpt.persistent_volume_claim.claim_name},
        }
    empty: dict[str, Any] = {}
    if ckpt.empty_dir is not None:
        empty = ckpt.empty_dir.model_dump(exclude_none=True)
    return {"name": "checkpoint", "emptyDir": empty}


def _secret_env(job: RLHFJob) -> dict[str, Any]:
    ref = {"name": secret_name(job.name), "key": SECRET_KEY}
    return {"name": ENV_JOB_SECRET, "valueFrom": {"secretKeyRef": ref}}


# What a SIGTERMed process leaves itself before the kubelet's SIGKILL: the gang's
# shutdown after the emergency checkpoint, and the process's exit.
_STOP_MARGIN_S = 5


def _stop_env(job: RLHFJob) -> list[dict[str, Any]]:
    """RLHFJOB_STOP_GRACE_S under runPolicy.terminationGracePeriodSeconds; none when that
    is unset (the runtime's default, 25 s, is under Kubernetes' default 30 s)."""
    grace = job.spec.run_policy.termination_grace_period_seconds
    if grace is None:
        return []
    return [{"name": ENV_STOP_GRACE, "value": str(max(1, grace - _STOP_MARGIN_S))}]


def _customise(pod_spec: dict[str, Any], container: dict[str, Any], pod: PodSettings) -> None:
    """The role's optional pod settings (spec.podTemplate merged with the role's own).

    A ServiceAccount named here still gets no automounted token (workers never talk
    to the API server); a workload that needs one mounts a projected token volume.
    """
    if pod.env_from:
        container["envFrom"] = [e.model_dump(mode="json", exclude_none=True) for e in pod.env_from]
    optional = {
        "serviceAccountName": pod.service_account_name,
        "priorityClassName": pod.priority_class_name,
        "affinity": pod.affinity,
    }
    pod_spec.update({key: value for key, value in optional.items() if value is not None})
    if pod.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s.name} for s in pod.image_pull_secrets]


def build_pod(job: RLHFJob, plan: JobPlan, worker: Worker, *, generation: int) -> dict[str, Any]:
    """The pod of one worker for restart ``generation``.

    The user's settings (``worker.pod``: spec.env, nodeSelector, tolerations,
    podTemplate and the role's own, merged) come after rlhfjob's own in every list
    and map, and never replace them: the spec refuses a user's reserved env name,
    own volume name or mount path, and ``rlhf.dev/*`` or ``app.kubernetes.io``
    label (spec/pod.py), and the operator's labels and annotations are written last
    regardless. runPolicy.terminationGracePeriodSeconds and schedulingPolicy are
    read here, so a change to them reaches the pods of the next generation. The pod
    starts gated (kube/gang.py) and, for a job with a Kueue queue, joins the
    generation's pod group (kube/kueue.py).
    """
    spec = job.spec
    pod = worker.pod
    ckpt = spec.checkpoint
    env = plan.env(
        worker,
        master_addr=master_addr(job, plan, generation=generation),
        spec_path=f"{SPEC_DIR}/{SPEC_FILE}",
        checkpoint_dir=ckpt.mount_path,
        restart_generation=generation,
    )
    ckpt_mount: dict[str, Any] = {"name": "checkpoint", "mountPath": ckpt.mount_path}
    if ckpt.persistent_volume_claim is not None and ckpt.persistent_volume_claim.sub_path:
        ckpt_mount["subPath"] = ckpt.persistent_volume_claim.sub_path
    ports = [{"name": _METRICS, "containerPort": plan.metrics_port, "protocol": "TCP"}]
    if worker.is_driver:
        ports.insert(0, {"name": _RENDEZVOUS, "containerPort": plan.master_port, "protocol": "TCP"})
    container: dict[str, Any] = {
        "name": "driver" if worker.is_driver else "worker",
        "image": worker.image,
        "command": list(WORKER_COMMAND),
        "env": [{"name": k, "value": v} for k, v in env.items()]
        + [_secret_env(job)]
        + _stop_env(job)
        + [e.container_env() for e in pod.env],
        "ports": ports,
        "resources": _resources(worker),
        "volumeMounts": [
            {"name": "spec", "mountPath": SPEC_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "shm", "mountPath": "/dev/shm"},
            ckpt_mount,
            *(m.model_dump(mode="json", exclude_none=True) for m in pod.volume_mounts),
        ],
        "securityContext": {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if spec.image_pull_policy:
        container["imagePullPolicy"] = spec.image_pull_policy
    pod_spec: dict[str, Any] = {
        # The operator restarts the whole gang; a kubelet restarting one container would not.
        "restartPolicy": "Never",
        "hostname": pod_hostname(worker, generation=generation),
        "subdomain": service_name(job.name),
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {"name": "spec", "configMap": {"name": configmap_name(job.name)}},
            {"name": "tmp", "emptyDir": {}},
            {"name": "shm", "emptyDir": {"medium": "Memory"}},
            _checkpoint_volume(job),
            *(v.model_dump(mode="json", exclude_none=True) for v in pod.volumes),
        ],
    }
    _customise(pod_spec, container, pod)
    grace = spec.run_policy.termination_grace_period_seconds
    if grace is not None:
        pod_spec["terminationGracePeriodSeconds"] = grace
    if worker.node_selector:
        pod_spec["nodeSelector"] = dict(worker.node_selector)
    if worker.tolerations:
        pod_spec["tolerations"] = [t.model_dump(exclude_none=True) for t in worker.tolerations]
    name = pod_name(job.name, worker, generation=generation)
    meta = _meta(job, name, pod_labels(job.name, worker, generation=generation))
    meta["labels"] = {**pod.labels, **meta["labels"]}
    meta["annotations"] = {**pod.annotations, ANNOTATION_MODELS: ",".join(worker.models)}
    schedule_pod(job, pod_spec, meta, generation=generation)
    label_pod(job, plan, meta, generation=generation)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod_spec}


def build_gang(job: RLHFJob, plan: JobPlan, *, generation: int) -> list[dict[str, Any]]:
    """Every pod of ``generation``, driver first."""
    return [build_pod(job, plan, w, generation=generation) for w in plan.workers]


def build_pod_group(job: RLHFJob, plan: JobPlan, *, generation: int) -> dict[str, Any] | None:
    """The PodGroup of ``generation`` (runPolicy.schedulingPolicy.podGroup), or None.

    Old generations' PodGroups stay until the job goes (garbage collection), as
    their finished pods do.
    """
    group = pod_group_spec(job, plan)
    if group is None:
        return None
    api_version, spec = group
    name = pod_group_name(job.name, generation=generation)
    labels = {**common_labels(job.name), LABEL_GENERATION: str(generation)}
    return {
        "apiVersion": api_version,
        "kind": "PodGroup",
        "metadata": _meta(job, name, labels),
        "spec": spec,
    }


def build_service(job: RLHFJob, plan: JobPlan) -> dict[str, Any]:
    """Headless: DNS for ``driver.<job>`` and ``<role>-<replica>.<job>``, ready or not
    (workers rendezvous before any of them is ready)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(job, service_name(job.name), common_labels(job.name)),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": job_selector(job.name),
            "ports": [
                {"name": _RENDEZVOUS, "port": plan.master_port, "protocol": "TCP"},
                {"name": _METRICS, "port": plan.metrics_port, "protocol": "TCP"},
            ],
        },
    }


def build_configmap(job: RLHFJob) -> dict[str, Any]:
    """The job's manifest as ``job.yaml``, mounted at RLHFJOB_SPEC in every pod."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(job, configmap_name(job.name), common_labels(job.name)),
        "data": {SPEC_FILE: yaml.safe_dump(job.manifest(), sort_keys=False)},
    }


def build_secret(job: RLHFJob, token: str) -> dict[str, Any]:
    """The job's rendezvous Secret holding ``token`` (the caller draws it at random).

    Immutable: the pods of a gang must all read the same token, so nobody may
    change it under them; a new one comes only with a new Secret.
    """
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(job, secret_name(job.name), common_labels(job.name)),
        "type": "Opaque",
        "immutable": True,
        "stringData": {SECRET_KEY: token},
    }


def build_network_policy(job: RLHFJob, plan: JobPlan) -> dict[str, Any]:
    """Only this job's pods reach its pods, except the metrics port (see module doc)."""
    own = {"podSelector": {"matchLabels": {LABEL_JOB: job.name}}}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(job, network_policy_name(job.name), common_labels(job.name)),
        "spec": {
            "podSelector": {"matchLabels": job_selector(job.name)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [own]},
                {"ports": [{"port": plan.metrics_port, "protocol": "TCP"}]},
            ],
        },
    }
