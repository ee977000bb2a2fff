"""The operator's metrics: names, the jobs-by-phase gauge, and the exposition format."""

from __future__ import annotations

import urllib.request

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from rlhfjob_operator import metrics


def _samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.REGISTRY).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_names_follow_prometheus_conventions() -> None:
    names = {name for name, _ in _samples()}
    for expected in (
        "rlhfjob_operator_reconciles_total",
        "rlhfjob_operator_reconcile_errors_total",
        "rlhfjob_operator_reconcile_duration_seconds_bucket",
        "rlhfjob_operator_jobs",
        "rlhfjob_operator_gang_restarts_total",
        "rlhfjob_operator_pods_created_total",
    ):
        metrics.RECONCILES.labels(trigger="test").inc(0)
        metrics.ERRORS.labels(kind="temporary").inc(0)
        names = {name for name, _ in _samples()}
        assert expected in names, expected


def test_jobs_by_phase_counts_each_job_once() -> None:
    phases = metrics.JobPhases()
    phases.set("a", "x", None)
    phases.set("a", "y", "Running")
    phases.set("a", "x", "Running")
    samples = _samples()
    assert samples[("rlhfjob_operator_jobs", (("phase", "Running"),))] == 2
    assert samples[("rlhfjob_operator_jobs", (("phase", ""),))] == 0
    phases.forget("a", "x")
    phases.forget("a", "y")
    assert _samples()[("rlhfjob_operator_jobs", (("phase", "Running"),))] == 0


def test_served_over_http() -> None:
    server = metrics.serve(0, "127.0.0.1")
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{server.server_port}/metrics", timeout=10
        ) as resp:
            body = resp.read().decode()
        assert "rlhfjob_operator_jobs" in body
    finally:
        server.shutdown()
        server.server_close()


def test_every_error_kind_is_exported_before_the_first_error() -> None:
    """A counter series born at 1 reads as no increase(): the chart's
    RLHFJobOperatorReconcileErrors alert needs each kind at 0 from the start."""
    samples = _samples()
    for kind in metrics.ERROR_KINDS:
        assert (("rlhfjob_operator_reconcile_errors_total", (("kind", kind),))) in samples
