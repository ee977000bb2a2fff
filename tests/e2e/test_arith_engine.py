"""The YAML-only text job on the test cluster: examples/grpo_arith_engine.yaml
(`entrypoint: {engine: grpo}`, no Python file of the user's) applied with kubectl trains
to Succeeded, its pods real processes (the test kubelet's PodRunner).

The files the manifest names are made by the example's own ``--prepare-only`` (in this
process) onto a PersistentVolumeClaim's volume, and every pod mounts that claim
(spec.podTemplate), as a user brings a model and prompts to a cluster. The runner rewrites
mount paths only in a pod's environment and command, not in the job's spec, so the claim
is mounted at its host directory and the manifest names the files there. Shortened to two
episodes, its four models in one worker pod beside the driver: what it adds is the engine
entrypoint, the text files and the claim under the operator, not training.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from gangs import REPO, Checkpoints
from operator_proc import job, running_operator, wait_for

from cluster import Cluster

EXAMPLE = REPO / "examples" / "grpo_arith_engine.yaml"
EPISODES = 2
SHIPPED_DIR = "grpo-arith/"  # the manifest's paths, relative as it ships


def prepare(where: Path) -> None:
    """``python examples/grpo_arith.py --prepare-only --workdir where``, in this process."""
    spec = importlib.util.spec_from_file_location(
        "example_grpo_arith", REPO / "examples" / "grpo_arith.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--prepare-only", "--workdir", str(where), "--warmup-steps", "10"])


def rebased(value: Any, root: Path) -> Any:
    """Every string of the manifest's sections starting with ``grpo-arith/`` moved under
    ``root``."""
    if isinstance(value, dict):
        return {k: rebased(v, root) for k, v in value.items()}
    if isinstance(value, str) and value.startswith(SHIPPED_DIR):
        return str(root / value)
    return value


def shortened(out: Path, claim: Checkpoints) -> Path:
    manifest = yaml.safe_load(EXAMPLE.read_text())
    spec = manifest["spec"]
    assert spec["entrypoint"] == {"engine": "grpo"}
    spec["runtime"] = rebased(spec["runtime"], claim.path)
    spec["models"] = rebased(spec["models"], claim.path)
    spec["runtime"].update(
        num_episode=EPISODES,
        sample_per_episode=8,  # prompts, 8 answers each
        generation_batch_size=8,
        train_micro_batch_size=8,
        train_global_batch_size=8,
        eval_episode_interval=EPISODES,
        enable_eval_before_training=False,
        # One worker pod for the four models and the driver's: two processes to start
        # (torch and transformers to import) instead of five, on CI's two cores.
        colocation=[["policy", "reference", "reward", "grpo_policy"]],
    )
    spec["podTemplate"] = {
        "volumes": [
            {"name": "work", "persistentVolumeClaim": {"claimName": claim.claim, "readOnly": True}}
        ],
        "volumeMounts": [{"name": "work", "mountPath": str(claim.path), "readOnly": True}],
    }
    spec["runPolicy"] = {"backoffLimit": 0}  # a failure here is a bug, not something to retry
    path = out / "grpo-arith-engine.yaml"
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return path


def test_yaml_only_arith_job_applied_with_kubectl_succeeds(
    cluster: Cluster,
    namespace: str,
    pods: Any,
    checkpoints: Checkpoints,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name, driver = "grpo-arith-engine", "grpo-arith-engine-driver-g0"
    prepare(checkpoints.path / "grpo-arith")
    with running_operator(cluster, namespace, backoff=1.0):
        t0 = time.perf_counter()
        cluster.kubectl_run("apply", "-n", namespace, "-f", str(shortened(tmp_path, checkpoints)))

        def finished() -> bool:
            phase = (job(cluster, namespace, name).get("status") or {}).get("phase")
            assert phase not in ("Failed", "Restarting"), job(cluster, namespace, name)["status"]
            return phase == "Succeeded"

        try:
            wait_for(finished, what="the YAML-only arith job Succeeded", timeout=600)
        finally:
            print(f"--- driver log ---\n{pods.log(namespace, driver)[-6000:]}")
        took = time.perf_counter() - t0
        status = job(cluster, namespace, name)["status"]
        cluster.kubectl_run(
            "delete", "rlhfjob", name, "-n", namespace, "--wait=true", "--timeout=240s", timeout=250
        )
        wait_for(lambda: not pods.running(namespace), what="every pod process gone")
    with capsys.disabled():
        print(f"\nYAML-only arith job ({EPISODES} episodes), 2 pods: {took:.0f} s; {status}")
    assert status["episode"] == EPISODES, status
    assert 0.0 <= status["reward"] <= 1.0, status  # exact_answer: 1 right, 0 wrong
