"""The chart's dashboard and alerts on the real Prometheus (`make cluster-bin` builds it).

Prometheus scrapes a running `rlhfjob run` job's driver and a running operator through
the chart's own PodMonitor and ServiceMonitor (rendered by the real helm, relabelled as
the Prometheus Operator relabels them: `cluster.prometheus`), and evaluates the chart's
PrometheusRule, its windows shortened through the chart's values. The job
(tests/e2e/alertjob.py) crashes twice, then reports a reward that collapses, then
hangs; the operator fails a job whose spec only pydantic refuses. Each of the four
alerts must fire, on the right labels, and only once its condition held; every query
of every panel and variable of helm/rlhfjob/dashboards/rlhfjob.json must return a
series with a finite value over the run; promtool checks the rules and both pages.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from dashboards import panel_exprs
from gangs import REPO
from jobfiles import write_job
from malformed import base_manifest
from operator_proc import apply, running_operator, wait_phase

from cluster import (
    Cluster,
    Missing,
    Prometheus,
    Target,
    promtool,
    rule_groups,
    scrape_job,
    wait_until,
)
from rlhfjob_operator.kube.names import pod_labels
from rlhfjob_operator.local import load_job
from rlhfjob_operator.plan import plan_job

CHART = REPO / "helm" / "rlhfjob"
RELEASE, RELEASE_NS = "rel", "rlhfjob-system"
# Grafana's $__rate_interval at a 1 s scrape: four scrape intervals.
RATE_INTERVAL = "4s"
STUCK_AFTER = 6
VALUES: dict[str, Any] = {
    "operator": {"metricsPort": 8080},
    "monitoring": {
        "podMonitor": {"enabled": True, "interval": "1s"},
        "serviceMonitor": {"enabled": True, "interval": "1s"},
        "prometheusRule": {
            "enabled": True,
            "stuckAfterSeconds": STUCK_AFTER,
            "restarts": 2,
            "restartWindow": "5m",
            "rewardDrop": 0.5,
            "rewardWindow": "5m",
            "rewardFor": "2s",
            "errorWindow": "5m",
        },
    },
}
RUNTIME = {
    "num_episode": 30,
    "sample_per_episode": 8,
    "generation_batch_size": 4,
    "train_micro_batch_size": 2,
    "train_global_batch_size": 4,
    "save_episode_interval": 1,
    "eval_episode_interval": 1,
    "max_staleness": 1,  # generation ahead: the staleness panel has a series
    "seed": 7,
}
# Two starts that lose the scorer after 2 episodes; then, in the third, 3 episodes of
# reward 1.0, 3 of 0.0 and a hang. Batches of 0.6 s: every value is scraped.
SCRIPT = {"crash_generations": 2}
MODELS = {
    "actor": {"args": {**SCRIPT, "pause": 0.6, "hang_after": 12, "hang_seconds": 120}},
    "scorer": {"args": {**SCRIPT, "crash_after": 4, "good_episodes": 3}},
    "learner": {"trainable": True},
}
ALERTS = (
    "RLHFJobRestartingRepeatedly",
    "RLHFJobRewardCollapsed",
    "RLHFJobStuck",
    "RLHFJobOperatorReconcileErrors",
)


def _render(cluster: Cluster, where: Path) -> dict[str, dict[str, Any]]:
    values = where / "values.yaml"
    values.write_text(yaml.safe_dump(VALUES))
    args = ("template", RELEASE, str(CHART), "-n", RELEASE_NS, "-f", str(values))
    out = cluster.helm_run(*args).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    wanted = ("PodMonitor", "ServiceMonitor", "PrometheusRule")
    found = {d["kind"]: d for d in docs if d["kind"] in wanted}
    found["Service"] = next(d for d in docs if d["kind"] == "Service")
    return found


def _manifest(tmp_path: Path, name: str) -> Path:
    runtime = {**RUNTIME, "data_checkpoint_path": str(tmp_path / "ckpt")}
    entry = REPO / "tests" / "e2e" / "alertjob.py"
    return write_job(tmp_path, name, runtime, MODELS, entry, backoff_limit=2)


def _substitute(expr: str, namespace: str, job: str) -> str:
    out = expr.replace("$namespace", namespace).replace("$job", job)
    return out.replace("$__rate_interval", RATE_INTERVAL)


def _finite(result: list[dict[str, Any]]) -> bool:
    return any(not math.isnan(float(v)) for series in result for _, v in series["values"])


def _first(result: list[dict[str, Any]]) -> float:
    return min(float(t) for series in result for t, _ in series["values"])


def test_dashboard_and_alerts_on_a_real_prometheus(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    try:
        promtool("--version")
    except Missing as exc:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(str(exc), pytrace=False)
        pytest.skip(str(exc))
    rendered = _render(cluster, tmp_path)
    rules = rule_groups(rendered["PrometheusRule"])
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    promtool("check", "rules", str(tmp_path / "rules.yaml"))
    assert {r["alert"] for g in rules["groups"] for r in g["rules"]} == set(ALERTS)
    pods_job = scrape_job(rendered["PodMonitor"])
    operator_job = scrape_job(rendered["ServiceMonitor"])
    service = rendered["Service"]

    job_name = f"prom-{namespace}"[:40]
    path = _manifest(tmp_path, job_name)
    driver = plan_job(load_job(path)).driver
    clash = copy.deepcopy(base_manifest("clash"))
    clash["spec"]["models"]["ppo-policy"] = {}  # same pod names as ppo_policy: Failed

    stderr = tmp_path / "run.stderr"
    with (
        Prometheus([pods_job, operator_job], rules=rules) as prom,
        running_operator(cluster, namespace) as op,
        stderr.open("w") as err,
    ):
        prom.set_targets(
            operator_job,
            [
                Target(
                    f"127.0.0.1:{op.metrics_port}",
                    namespace=RELEASE_NS,
                    pod=f"{RELEASE}-rlhfjob-0",
                    labels=service["metadata"]["labels"],
                    service=service["metadata"]["name"],
                )
            ],
        )
        # A first error before the first scrape would leave no increase() to see.
        permanent = 'rlhfjob_operator_reconcile_errors_total{kind="permanent"}'
        wait_until(lambda: prom.query(permanent), timeout=60, what="the operator scraped")
        apply(cluster, namespace, clash)
        wait_phase(cluster, namespace, "clash", "Failed")
        start = time.time()
        run = subprocess.Popen(
            [sys.executable, "-m", "rlhfjob_operator.cli", "run", str(path), "--backoff-base", "1"],
            stdout=subprocess.DEVNULL,
            stderr=err,
            text=True,
            start_new_session=True,
        )
        pages: dict[str, str] = {}
        try:
            firing = _watch(prom, run, stderr, pods_job, namespace, job_name, driver, pages)
        finally:
            run.terminate()  # rlhfjob run stops its gang (each worker in its own session)
            run.wait(timeout=60)
        end = time.time()
        promtool("check", "metrics", stdin=pages["driver"])
        promtool("check", "metrics", stdin=_page(f"http://127.0.0.1:{op.metrics_port}/metrics"))

        for name, alert in sorted(firing.items()):
            print(f"alert {name} firing: {alert['labels']} value {alert['value']}")
        job_labels = {"namespace": namespace, "rlhf_job": job_name}
        for name in ALERTS[:3]:
            assert job_labels.items() <= firing[name]["labels"].items(), firing[name]
        assert float(firing["RLHFJobRestartingRepeatedly"]["value"]) == 2
        assert firing["RLHFJobRewardCollapsed"]["labels"]["module"] == "scorer"
        assert float(firing["RLHFJobRewardCollapsed"]["value"]) == 1.0
        errors = firing["RLHFJobOperatorReconcileErrors"]["labels"]
        assert (errors["namespace"], errors["kind"]) == (RELEASE_NS, "permanent")

        # Each alert fired only once its condition held, by Prometheus's own samples.
        def first_firing(alert: str) -> float:
            expr = f'ALERTS{{alertname="{alert}", alertstate="firing"}}'
            return _first(prom.query_range(expr, start, end))

        last = f'{{namespace="{namespace}", rlhf_job="{job_name}", pod=~".*-g2"}}'
        (progress,) = prom.query(f"max_over_time(rlhfjob_progress_timestamp_seconds{last}[10m])")
        assert first_firing("RLHFJobStuck") >= float(progress["value"][1]) + STUCK_AFTER
        collapsed = f"rlhfjob_reward_mean{last} == 0"
        assert (
            first_firing("RLHFJobRewardCollapsed")
            >= _first(prom.query_range(collapsed, start, end)) + 2
        )
        second = prom.query_range(f"rlhfjob_restarts{last}", start, end)
        assert first_firing("RLHFJobRestartingRepeatedly") >= _first(second)

        # Every panel draws: each query returns a finite value at some point of the run.
        empty = []
        for title, expr in panel_exprs():
            query = _substitute(expr, namespace, job_name)
            result = prom.query_range(query, start, end)
            print(f"panel {title!r}: {len(result)} series, finite: {_finite(result)}: {expr}")
            if not _finite(result):
                empty.append(f"{title}: {query}")
        assert not empty, "panels whose query returned no series:\n" + "\n".join(empty)
        assert namespace in prom.label_values("namespace", "rlhfjob_episode")
        in_namespace = f'rlhfjob_episode{{namespace="{namespace}"}}'
        assert prom.label_values("rlhf_job", in_namespace) == [job_name]


def _page(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def _watch(
    prom: Prometheus,
    run: subprocess.Popen[str],
    stderr: Path,
    pods_job: dict[str, Any],
    namespace: str,
    job_name: str,
    driver: Any,
    pages: dict[str, str],
) -> dict[str, dict[str, Any]]:
    """Point the PodMonitor's targets at each new driver, as Kubernetes discovery would
    (one pod per generation, the dead one gone), until every alert fired; returns each
    alert as Prometheus first reported it firing. Bounded: 240 s."""
    ports: list[str] = []
    firing: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and set(firing) != set(ALERTS):
        found = re.findall(r"driver metrics at http://127\.0\.0\.1:(\d+)/", stderr.read_text())
        if found != ports:
            ports = found
            generation = len(ports) - 1
            prom.set_targets(
                pods_job,
                [
                    Target(
                        f"127.0.0.1:{ports[-1]}",
                        namespace=namespace,
                        pod=f"{job_name}-driver-g{generation}",
                        labels=pod_labels(job_name, driver, generation=generation),
                    )
                ],
            )
        if "driver" not in pages and len(ports) == 3:
            with contextlib.suppress(OSError):  # not serving yet
                pages["driver"] = _page(f"http://127.0.0.1:{ports[-1]}/metrics")
        for alert in prom.alerts():
            if alert["state"] == "firing":
                firing.setdefault(alert["labels"]["alertname"], alert)
        if run.poll() is not None:
            break
        time.sleep(0.5)
    missing = set(ALERTS) - set(firing)
    assert not missing, (
        f"alerts that never fired: {sorted(missing)} (run exit {run.poll()}); "
        f"targets: {prom.active_targets()}\n{stderr.read_text()[-3000:]}"
    )
    return firing
