"""Names and labels of everything the operator creates for a job (pure).

Pod names and hostnames carry the restart generation, so a restarted operator
re-derives exactly the names it may already have created (create-if-absent is
then idempotent) and a re-created gang never collides with its terminating
predecessor: not in the API, and not in the headless Service's DNS, where the
new driver's name (MASTER_ADDR) must never resolve to an old driver still
terminating on a lost node.
"""

from __future__ import annotations

from rlhfjob_operator.contract import COMMON_LABELS
from rlhfjob_operator.plan import Worker

__all__ = [
    "ANNOTATION_EPISODE",
    "ANNOTATION_LAST_CHECKPOINT",
    "ANNOTATION_MODELS",
    "LABEL_GENERATION",
    "LABEL_JOB",
    "LABEL_REPLICA",
    "LABEL_ROLE",
    "SCHEDULING_GATE",
    "SECRET_KEY",
    "common_labels",
    "configmap_name",
    "job_selector",
    "network_policy_name",
    "pod_group_name",
    "pod_hostname",
    "pod_labels",
    "pod_name",
    "secret_name",
    "service_name",
]

# Under contract.OWN_KEY_PREFIX, which users may not set on a pod.
LABEL_JOB = "rlhf.dev/job"
LABEL_ROLE = "rlhf.dev/role"
LABEL_REPLICA = "rlhf.dev/replica"
LABEL_GENERATION = "rlhf.dev/generation"
# Job progress a driver pod may carry (set by whoever can patch it; the
# operator also scrapes the driver's metrics): episodes done, last checkpoint.
ANNOTATION_EPISODE = "rlhf.dev/episode"
ANNOTATION_LAST_CHECKPOINT = "rlhf.dev/last-checkpoint"
# The models a pod hosts, comma-separated (empty for the driver).
ANNOTATION_MODELS = "rlhf.dev/models"
# The key of the job's rendezvous Secret that holds its token.
SECRET_KEY = "token"
# The scheduling gate every pod is created with; lifted once its whole generation exists.
SCHEDULING_GATE = "rlhf.dev/gang"


def service_name(job: str) -> str:
    """The headless Service; also every pod's ``subdomain``."""
    return job


def configmap_name(job: str) -> str:
    return f"{job}-spec"


def network_policy_name(job: str) -> str:
    return job


def secret_name(job: str) -> str:
    """The Secret holding the job's rendezvous token (RLHFJOB_JOB_SECRET in every pod)."""
    return f"{job}-rendezvous"


def pod_hostname(worker: Worker, *, generation: int) -> str:
    """``driver-g<gen>`` or ``<role>-<replica>-g<gen>``: the pod's DNS label in the
    job's headless Service (shorter than its pod name, so within 63 characters)."""
    return f"{worker.hostname}-g{generation}"


def pod_name(job: str, worker: Worker, *, generation: int) -> str:
    """``<job>-driver-g<gen>`` or ``<job>-<role>-<replica>-g<gen>``."""
    return f"{job}-{pod_hostname(worker, generation=generation)}"


def pod_group_name(job: str, *, generation: int) -> str:
    """The PodGroup of one restart generation (runPolicy.schedulingPolicy.podGroup)."""
    return f"{job}-g{generation}"


def job_selector(job: str) -> dict[str, str]:
    """matchLabels of every pod of ``job``, whatever its generation."""
    return {LABEL_JOB: job}


def pod_labels(job: str, worker: Worker, *, generation: int) -> dict[str, str]:
    return {
        **COMMON_LABELS,
        LABEL_JOB: job,
        LABEL_ROLE: worker.role,
        LABEL_REPLICA: str(worker.replica),
        LABEL_GENERATION: str(generation),
    }


def common_labels(job: str) -> dict[str, str]:
    """Labels of the job's Service, ConfigMap, NetworkPolicy and Secret."""
    return {**COMMON_LABELS, LABEL_JOB: job}
