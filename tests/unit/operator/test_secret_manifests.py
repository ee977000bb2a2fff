"""The job's rendezvous Secret and how pods read it (pure builders, no server)."""

from __future__ import annotations

from malformed import base_manifest

from rlhfjob_operator.contract import ENV_JOB_SECRET
from rlhfjob_operator.kube.manifests import build_gang, build_secret
from rlhfjob_operator.kube.names import LABEL_JOB, secret_name
from rlhfjob_operator.plan import plan_job
from rlhfjob_operator.spec import load_job

UID = "0b5c5e9a-8f3e-4d57-9a51-6f0e4b7c2a11"


def _job():
    m = base_manifest("job")
    m["metadata"].update(namespace="team", uid=UID)
    return load_job(m)


def test_secret_is_owned_immutable_and_named_for_the_job() -> None:
    job = _job()
    secret = build_secret(job, "t" * 43)
    assert secret["metadata"]["name"] == secret_name("job") == "job-rendezvous"
    assert secret["metadata"]["namespace"] == "team"
    assert secret["metadata"]["labels"][LABEL_JOB] == "job"
    (owner,) = secret["metadata"]["ownerReferences"]
    assert owner["uid"] == UID and owner["controller"] is True
    assert secret["immutable"] is True and secret["type"] == "Opaque"
    assert secret["stringData"] == {"token": "t" * 43}


def test_every_pod_reads_the_token_by_reference_never_as_a_literal() -> None:
    job = _job()
    pods = build_gang(job, plan_job(job), generation=0)
    for pod in pods:
        env = pod["spec"]["containers"][0]["env"]
        (entry,) = [e for e in env if e["name"] == ENV_JOB_SECRET]
        assert entry == {
            "name": ENV_JOB_SECRET,
            "valueFrom": {"secretKeyRef": {"name": "job-rendezvous", "key": "token"}},
        }
