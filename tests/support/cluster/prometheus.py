"""`Prometheus`: the real Prometheus and promtool (`make cluster-bin` builds them from the
Go module proxy) on loopback, scraping what a test hands it the way a Prometheus
Operator scrapes the chart's PodMonitor and ServiceMonitor on a cluster.

- `scrape_job(monitor)` turns a rendered PodMonitor or ServiceMonitor into a scrape
  config of file service discovery, with the relabelling the Prometheus Operator
  generates for it: keep the targets its selector matches on the `metrics` port, then
  `namespace`, `pod`, `container`, `endpoint` and `job` (`<namespace>/<name>` for a
  PodMonitor, the Service's name for a ServiceMonitor), then the monitor's own
  `relabelings`. A `Target` carries the meta labels Kubernetes service discovery would
  give the pod (namespace, name, labels, container and port name), so a selector or a
  relabelling that does not fit the operator's pods drops the target here as there.
- `rule_groups(prometheus_rule)`: a rendered PrometheusRule's groups, as a rule file.
- `set_targets` rewrites one job's file atomically; Prometheus re-reads it on change.
- `query`, `query_range`, `label_values`, `alerts`: the HTTP API; `promtool(...)`.

    with Prometheus([scrape_job(pod_monitor)], rules=groups) as prom:
        prom.set_targets(job, [Target("127.0.0.1:9090", namespace="ns", pod="p", labels=...)])
        prom.query('rlhfjob_episode{rlhf_job="x"}')

Edge cases: every wait is bounded; a failed start raises PrometheusError with the log's
tail; the TSDB lives in a temp dir removed by `stop()`, which is idempotent.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .paths import missing_prometheus, prometheus_bin_dir
from .processes import Component, free_ports, http_ok, wait_until
from .session import Missing


class PrometheusError(RuntimeError):
    """Prometheus did not start, or the HTTP API answered with an error."""


@dataclass(frozen=True)
class Target:
    """A pod's metrics endpoint as Kubernetes service discovery describes it."""

    address: str
    namespace: str
    pod: str
    labels: dict[str, str] = field(default_factory=dict)
    container: str = "main"
    port_name: str = "metrics"
    service: str | None = None  # set for a ServiceMonitor's endpoints

    def meta(self) -> dict[str, str]:
        out = {
            "__meta_kubernetes_namespace": self.namespace,
            "__meta_kubernetes_pod_name": self.pod,
            "__meta_kubernetes_pod_container_name": self.container,
            "__meta_kubernetes_pod_container_port_name": self.port_name,
        }
        prefix = "__meta_kubernetes_service" if self.service else "__meta_kubernetes_pod"
        if self.service:
            out["__meta_kubernetes_service_name"] = self.service
            out["__meta_kubernetes_endpoint_port_name"] = self.port_name
        for key, value in self.labels.items():
            out[f"{prefix}_label_{_sanitize(key)}"] = value
            out[f"{prefix}_labelpresent_{_sanitize(key)}"] = "true"
        return out


def _sanitize(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def _selector_keeps(selector: dict[str, Any], prefix: str) -> list[dict[str, Any]]:
    keeps = [
        {
            "source_labels": [
                f"{prefix}_label_{_sanitize(k)}",
                f"{prefix}_labelpresent_{_sanitize(k)}",
            ],
            "regex": f"({re.escape(v)});true",
            "action": "keep",
        }
        for k, v in (selector.get("matchLabels") or {}).items()
    ]
    for expr in selector.get("matchExpressions") or []:
        if expr["operator"] != "Exists":
            raise ValueError(f"selector operator {expr['operator']} is not translated here")
        keeps.append(
            {
                "source_labels": [f"{prefix}_labelpresent_{_sanitize(expr['key'])}"],
                "regex": "true",
                "action": "keep",
            }
        )
    return keeps


def _relabelings(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The monitor's camelCase relabelings in Prometheus's spelling."""
    names = {
        "sourceLabels": "source_labels",
        "targetLabel": "target_label",
        "replacement": "replacement",
        "regex": "regex",
        "action": "action",
        "separator": "separator",
    }
    return [{names[k]: v for k, v in item.items()} for item in items]


def scrape_job(monitor: dict[str, Any], *, targets_dir: str = "targets") -> dict[str, Any]:
    """A scrape config for a rendered PodMonitor or ServiceMonitor (one endpoint), its
    targets read from ``<targets_dir>/<job>.json`` (relative to the config file)."""
    kind, meta, spec = monitor["kind"], monitor["metadata"], monitor["spec"]
    endpoints = spec["podMetricsEndpoints" if kind == "PodMonitor" else "endpoints"]
    if len(endpoints) != 1:
        raise ValueError(f"{kind} {meta['name']}: one endpoint is translated, not {len(endpoints)}")
    (endpoint,) = endpoints
    name = f"{kind.lower()}/{meta['namespace']}/{meta['name']}/0"
    prefix = "__meta_kubernetes_pod" if kind == "PodMonitor" else "__meta_kubernetes_service"
    port_label = (
        "__meta_kubernetes_pod_container_port_name"
        if kind == "PodMonitor"
        else "__meta_kubernetes_endpoint_port_name"
    )
    relabel = _selector_keeps(spec["selector"], prefix)
    relabel.append({"source_labels": [port_label], "regex": endpoint["port"], "action": "keep"})
    for source, target in (
        ("__meta_kubernetes_namespace", "namespace"),
        ("__meta_kubernetes_pod_container_name", "container"),
        ("__meta_kubernetes_pod_name", "pod"),
    ):
        relabel.append({"source_labels": [source], "target_label": target})
    if kind == "PodMonitor":
        relabel.append(
            {"target_label": "job", "replacement": f"{meta['namespace']}/{meta['name']}"}
        )
    else:
        relabel.append(
            {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"}
        )
        relabel.append({"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job"})
    relabel.append({"target_label": "endpoint", "replacement": endpoint["port"]})
    relabel += _relabelings(endpoint.get("relabelings") or [])
    return {
        "job_name": name,
        "metrics_path": endpoint.get("path", "/metrics"),
        "scrape_interval": endpoint.get("interval", "15s"),
        "file_sd_configs": [{"files": [f"{targets_dir}/{_sanitize(name)}.json"]}],
        "relabel_configs": relabel,
    }


def rule_groups(prometheus_rule: dict[str, Any]) -> dict[str, Any]:
    """A rendered PrometheusRule as the content of a Prometheus rule file."""
    return {"groups": prometheus_rule["spec"]["groups"]}


class Prometheus:
    """Prometheus on 127.0.0.1 with ``scrape_configs`` (from :func:`scrape_job`) and
    ``rules`` (a rule file's content), evaluating every ``evaluation_interval``."""

    def __init__(
        self,
        scrape_configs: list[dict[str, Any]],
        *,
        rules: dict[str, Any] | None = None,
        evaluation_interval: str = "1s",
        start_timeout: float = 60.0,
    ) -> None:
        self.scrape_configs = scrape_configs
        self.rules = rules
        self.evaluation_interval = evaluation_interval
        self.start_timeout = start_timeout
        self.dir: Path | None = None
        self.component: Component | None = None
        self.url = ""

    def __enter__(self) -> Prometheus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Prometheus:
        missing = missing_prometheus()
        if missing:
            raise Missing(f"missing {', '.join(map(str, missing))}: run make cluster-bin")
        self.dir = Path(tempfile.mkdtemp(prefix="rlhfjob-prometheus-"))
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        assert self.dir is not None
        (self.dir / "targets").mkdir()
        config: dict[str, Any] = {
            "global": {"evaluation_interval": self.evaluation_interval},
            "scrape_configs": self.scrape_configs,
        }
        if self.rules is not None:
            (self.dir / "rules.yaml").write_text(yaml.safe_dump(self.rules))
            config["rule_files"] = ["rules.yaml"]
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(config))
        promtool("check", "config", str(self.dir / "prometheus.yml"))
        (port,) = free_ports(1)
        self.url = f"http://127.0.0.1:{port}"
        self.component = Component(
            "prometheus",
            [
                str(prometheus_bin_dir() / "prometheus"),
                f"--config.file={self.dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            self.dir / "prometheus.log",
        )
        self.component.start()
        try:
            wait_until(
                lambda: (
                    self.component is not None
                    and self.component.exit_code() is None
                    and http_ok(f"{self.url}/-/ready")
                ),
                timeout=self.start_timeout,
                what="Prometheus ready",
            )
        except TimeoutError as exc:
            raise PrometheusError(f"{exc}\n{self.log_tail()}") from exc

    def stop(self) -> None:
        if self.component is not None:
            self.component.stop()
            self.component = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def log_tail(self, lines: int = 40) -> str:
        return self.component.tail(lines) if self.component else "(not started)"

    # -- targets -----------------------------------------------------------

    def set_targets(self, job: dict[str, Any], targets: list[Target]) -> None:
        """The targets of one scrape config (from :func:`scrape_job`), replacing its last."""
        assert self.dir is not None
        (path,) = job["file_sd_configs"][0]["files"]
        groups = [{"targets": [t.address], "labels": t.meta()} for t in targets]
        tmp = self.dir / f"{path}.tmp"
        tmp.write_text(json.dumps(groups))
        os.replace(tmp, self.dir / path)

    # -- the HTTP API --------------------------------------------------------

    def api(self, path: str, **params: str | list[str]) -> Any:
        query = urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=30) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read() or b"{}")
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('error', body)}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return list(self.api("query", query=expr)["result"])

    def query_range(self, expr: str, start: float, end: float, step: float = 1.0) -> list[Any]:
        data = self.api("query_range", query=expr, start=str(start), end=str(end), step=str(step))
        return list(data["result"])

    def label_values(self, label: str, match: str) -> list[str]:
        return list(self.api(f"label/{label}/values", **{"match[]": [match]}))

    def alerts(self) -> list[dict[str, Any]]:
        return list(self.api("alerts")["alerts"])

    def active_targets(self) -> list[dict[str, Any]]:
        return list(self.api("targets", state="active")["activeTargets"])


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run promtool; a non-zero exit raises PrometheusError with its output."""
    missing = missing_prometheus()
    if missing:
        raise Missing(f"missing {', '.join(map(str, missing))}: run make cluster-bin")
    proc = subprocess.run(
        [str(prometheus_bin_dir() / "promtool"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if proc.returncode != 0:
        raise PrometheusError(f"promtool {' '.join(args)}: {proc.stdout}{proc.stderr}")
    return proc
