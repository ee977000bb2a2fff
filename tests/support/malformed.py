"""Malformed RLHFJob manifests, shared by the pydantic tests (tests/unit/operator) and the
API-server tests (tests/operator): each must be refused with a message naming ``field``.

``where`` says who must refuse it: "both" (the CRD's schema or CEL rules, and pydantic),
"pydantic" (rules only the operator and ``rlhfjob run`` check).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

Manifest = dict[str, Any]


def base_manifest(name: str = "bad") -> Manifest:
    """A small valid job."""
    return {
        "apiVersion": "rlhf.dev/v1alpha1",
        "kind": "RLHFJob",
        "metadata": {"name": name},
        "spec": {
            "image": "ghcr.io/rlhfjob/runtime:0.1.0",
            "entrypoint": {"file": "examples/ppo_sort.py"},
            "runtime": {
                "num_episode": 2,
                "sample_per_episode": 16,
                "generation_batch_size": 4,
                "train_micro_batch_size": 4,
                "train_global_batch_size": 8,
            },
            "models": {
                "policy": {"num_gpu": 1, "num_replica": 2},
                "reference": {"num_gpu": 1},
                "reward": {},
                "ppo_policy": {"num_gpu": 1, "trainable": True},
            },
        },
    }


def wide_manifest(
    name: str, replicas: int = 16, *, num_gpu: int = 1, **run_policy: Any
) -> Manifest:
    """A valid job of ``replicas`` policy replicas (and the driver): ``replicas + 1``
    pods, ``num_gpu`` GPUs each, ``run_policy`` as its runPolicy."""
    m = copy.deepcopy(base_manifest(name))
    m["spec"]["runtime"] = {
        "num_episode": 2,
        "sample_per_episode": 64,
        "generation_batch_size": 4,
        "train_micro_batch_size": 4,
    }
    policy: dict[str, Any] = {"num_replica": replicas}
    if num_gpu:
        policy["num_gpu"] = num_gpu
    m["spec"]["models"] = {"policy": policy}
    if run_policy:
        m["spec"]["runPolicy"] = run_policy
    return m


@dataclass(frozen=True)
class Case:
    id: str
    edit: Callable[[Manifest], None]
    field: str
    where: Literal["both", "pydantic"] = "both"

    def manifest(self, name: str = "bad") -> Manifest:
        m = copy.deepcopy(base_manifest(name))
        self.edit(m)
        return m


def _spec(**changes: Any) -> Callable[[Manifest], None]:
    def edit(m: Manifest) -> None:
        m["spec"].update(changes)

    return edit


def _runtime(**changes: Any) -> Callable[[Manifest], None]:
    def edit(m: Manifest) -> None:
        m["spec"]["runtime"].update(changes)

    return edit


def _model(model: str, **changes: Any) -> Callable[[Manifest], None]:
    def edit(m: Manifest) -> None:
        m["spec"]["models"].setdefault(model, {}).update(changes)

    return edit


def _pop(*path: str) -> Callable[[Manifest], None]:
    def edit(m: Manifest) -> None:
        node = m
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return edit


def _both(*edits: Callable[[Manifest], None]) -> Callable[[Manifest], None]:
    def edit(m: Manifest) -> None:
        for e in edits:
            e(m)

    return edit


def _rename(name: str) -> Callable[[Manifest], None]:
    def edit(m: Manifest) -> None:
        m["metadata"]["name"] = name

    return edit


def _add_model(name: str) -> Callable[[Manifest], None]:
    def edit(m: Manifest) -> None:
        m["spec"]["models"][name] = {}

    return edit


CASES: list[Case] = [
    Case("no-entrypoint", _pop("spec", "entrypoint"), "entrypoint"),
    Case("no-image", _pop("spec", "image"), "image"),
    Case("empty-image", _spec(image=""), "image"),
    Case(
        "entrypoint-file-and-module",
        _spec(entrypoint={"file": "a.py", "module": "a"}),
        "entrypoint",
    ),
    Case("entrypoint-neither", _spec(entrypoint={"args": ["--x"]}), "entrypoint"),
    Case(
        "entrypoint-file-and-engine",
        _spec(entrypoint={"file": "a.py", "engine": "grpo"}),
        "entrypoint",
    ),
    Case("entrypoint-unknown-engine", _spec(entrypoint={"engine": "dpo"}), "engine"),
    Case(
        "entrypoint-engine-with-args",
        _spec(entrypoint={"engine": "ppo", "args": ["--episodes", "3"]}),
        "entrypoint",
    ),
    Case("entrypoint-bad-module", _spec(entrypoint={"module": "not a module"}), "module"),
    Case("unknown-spec-key", _spec(replicas=3), "replicas"),
    Case("unknown-runtime-key", _runtime(num_episodes=3), "num_episodes"),
    Case("unknown-model-key", _model("policy", num_replicas=2), "num_replicas"),
    Case("zero-replicas", _model("policy", num_replica=0), "num_replica"),
    Case("negative-gpus", _model("policy", num_gpu=-1), "num_gpu"),
    Case("replicas-not-int", _model("policy", num_replica="two"), "num_replica"),
    Case(
        "global-not-multiple-of-micro",
        _runtime(train_micro_batch_size=4, train_global_batch_size=6),
        "train_global_batch_size",
    ),
    Case(
        "global-above-samples",
        _runtime(train_global_batch_size=32),
        "train_global_batch_size",
    ),
    Case(
        "generation-batch-above-samples",
        _runtime(generation_batch_size=32),
        "generation_batch_size",
    ),
    Case("colocation-of-one", _runtime(colocation=[["policy"]]), "colocation"),
    Case(
        "model-in-two-groups",
        _runtime(colocation=[["policy", "reference"], ["reference", "reward"]]),
        "colocation",
    ),
    # Edges where the CEL and pydantic once disagreed (tests/unit/operator/test_spec_rules.py).
    Case(
        "model-twice-in-one-group",
        _runtime(colocation=[["policy", "policy"]]),
        "colocation",
    ),
    Case(
        "empty-checkpoint-path",
        _runtime(save_episode_interval=1, data_checkpoint_path=""),
        "data_checkpoint_path",
    ),
    Case("model-name-ends-in-newline", _add_model("critic\n"), "models"),
    Case("colocation-unknown-model", _runtime(colocation=[["policy", "critic"]]), "colocation"),
    Case(
        "colocation-replicas-differ",
        _runtime(colocation=[["policy", "reference"]]),
        "colocation",
    ),
    Case(
        "replicas-times-batch-above-samples",
        _model("policy", num_replica=8),
        "models",
    ),
    Case(
        "save-without-checkpoint-path",
        _runtime(save_episode_interval=1),
        "data_checkpoint_path",
    ),
    Case("bad-loader-type", _runtime(stream_data_loader_type="eager"), "stream_data_loader_type"),
    Case("uppercase-model-name", _add_model("Critic"), "models"),
    Case("model-named-driver", _add_model("driver"), "driver"),
    Case("negative-backoff-limit", _spec(runPolicy={"backoffLimit": -1}), "backoffLimit"),
    Case("zero-deadline", _spec(runPolicy={"activeDeadlineSeconds": 0}), "activeDeadlineSeconds"),
    Case(
        "negative-ttl", _spec(runPolicy={"ttlSecondsAfterFinished": -5}), "ttlSecondsAfterFinished"
    ),
    Case("suspend-not-bool", _spec(runPolicy={"suspend": "maybe"}), "suspend"),
    Case(
        "min-available-without-podgroup",
        _spec(runPolicy={"schedulingPolicy": {"minAvailable": 2}}),
        "minAvailable",
    ),
    Case(
        "zero-min-available",
        _spec(runPolicy={"schedulingPolicy": {"minAvailable": 0, "podGroup": {"kind": "volcano"}}}),
        "minAvailable",
    ),
    Case(
        "unknown-podgroup-kind",
        _spec(runPolicy={"schedulingPolicy": {"podGroup": {"kind": "yunikorn"}}}),
        "kind",
    ),
    Case(
        "bad-scheduler-name",
        _spec(runPolicy={"schedulingPolicy": {"schedulerName": "Not A Name"}}),
        "schedulerName",
    ),
    Case(
        "failure-rule-neither-match",
        _spec(runPolicy={"failurePolicy": {"rules": [{"action": "FailJob"}]}}),
        "onExitCodes or onPodConditions",
    ),
    Case(
        "failure-rule-both-matches",
        _spec(
            runPolicy={
                "failurePolicy": {
                    "rules": [
                        {
                            "action": "Restart",
                            "onExitCodes": {"operator": "In", "values": [3]},
                            "onPodConditions": [{"type": "DisruptionTarget"}],
                        }
                    ]
                }
            }
        ),
        "onExitCodes or onPodConditions",
    ),
    Case(
        "failure-rule-unknown-action",
        _spec(
            runPolicy={
                "failurePolicy": {
                    "rules": [
                        {"action": "Ignore", "onExitCodes": {"operator": "In", "values": [3]}}
                    ]
                }
            }
        ),
        "action",
    ),
    Case(
        "failure-rule-exit-zero",
        _spec(
            runPolicy={
                "failurePolicy": {
                    "rules": [
                        {"action": "Restart", "onExitCodes": {"operator": "In", "values": [0]}}
                    ]
                }
            }
        ),
        "must not list 0",
    ),
    Case(
        "failure-rule-exit-code-too-big",
        _spec(
            runPolicy={
                "failurePolicy": {
                    "rules": [
                        {"action": "Restart", "onExitCodes": {"operator": "NotIn", "values": [256]}}
                    ]
                }
            }
        ),
        "values",
    ),
    Case(
        "failure-rule-unknown-role",
        _spec(
            runPolicy={
                "failurePolicy": {
                    "rules": [
                        {
                            "action": "FailJob",
                            "onExitCodes": {"operator": "In", "values": [3], "role": "critic"},
                        }
                    ]
                }
            }
        ),
        "onExitCodes.role",
    ),
    Case(
        "bad-toleration-operator",
        _spec(tolerations=[{"key": "a", "operator": "Maybe"}]),
        "operator",
    ),
    Case(
        "toleration-exists-with-value",
        _spec(tolerations=[{"key": "a", "operator": "Exists", "value": "x"}]),
        "value",
    ),
    Case(
        "toleration-seconds-without-noexecute",
        _spec(tolerations=[{"key": "a", "operator": "Exists", "tolerationSeconds": 5}]),
        "tolerationSeconds",
    ),
    Case(
        "two-checkpoint-volumes",
        _spec(checkpoint={"emptyDir": {}, "persistentVolumeClaim": {"claimName": "c"}}),
        "checkpoint",
    ),
    Case(
        "pvc-without-claim",
        _spec(checkpoint={"persistentVolumeClaim": {}}),
        "claimName",
    ),
    Case("relative-mount-path", _spec(checkpoint={"mountPath": "ckpt"}), "mountPath"),
    Case("reserved-env", _spec(env=[{"name": "RANK", "value": "3"}]), "env"),
    Case("reserved-env-prefix", _spec(env=[{"name": "RLHFJOB_ROLE", "value": "x"}]), "env"),
    Case("bad-pull-policy", _spec(imagePullPolicy="Sometimes"), "imagePullPolicy"),
    Case(
        "gpu-in-pod-resources",
        _model("policy", pod={"resources": {"limits": {"nvidia.com/gpu": 2}}}),
        "nvidia.com/gpu",
    ),
    Case("node-selector-not-string", _spec(nodeSelector={"gpu": 1}), "nodeSelector"),
    Case("job-name-too-long", _rename("j" * 51), "metadata.name"),
    Case(
        "snake-case-kube-key",
        _spec(run_policy={"backoffLimit": 1}),
        "run_policy",
    ),
    Case(
        "models-clash-in-pod-names",
        _both(_add_model("ppo-policy")),
        "ppo-policy",
        where="pydantic",
    ),
]
