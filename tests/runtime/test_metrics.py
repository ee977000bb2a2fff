"""A real `rlhfjob run` job serves the driver's metrics: every name the Grafana
dashboard queries is on its /metrics page, the page parses, the values are right."""

from __future__ import annotations

import re

from dashboards import dashboard_exprs, metric_names, served_families

from conftest import rlhfjob_run, write_job

RUNTIME = dict(
    num_episode=3,
    sample_per_episode=8,
    generation_batch_size=4,
    train_micro_batch_size=2,
    train_global_batch_size=4,
)
MODELS = {"actor": {}, "scorer": {}, "learner": {"trainable": True}}


def test_running_job_serves_every_dashboard_metric(tmp_path, job_name):
    path = write_job(tmp_path, job_name, RUNTIME, MODELS, entry="metricsjob.py")
    proc = rlhfjob_run(path, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"driver metrics at http://127\.0\.0\.1:\d+/metrics", proc.stderr)
    page = proc.stdout.split("----- metrics begin -----\n", 1)[1]
    page = page.split("----- metrics end -----", 1)[0]
    served = served_families(page)  # parses, or raises

    wanted = set().union(*(metric_names(e) for e in dashboard_exprs()))
    assert wanted <= set(served), f"dashboard queries not served: {wanted - set(served)}"

    samples = [s for f in {id(f): f for f in served.values()}.values() for s in f.samples]
    assert all(s.labels["rlhf_job"] == job_name for s in samples)

    def value(metric: str, /, **labels: str) -> float:
        for sample in samples:
            if sample.name == metric and labels.items() <= sample.labels.items():
                return sample.value
        raise AssertionError(f"{metric}{labels} not served")

    assert value("rlhfjob_episode") == 3
    assert value("rlhfjob_num_episode") == 3
    assert value("rlhfjob_restarts") == 0
    assert value("rlhfjob_samples_total") == 3 * 8
    assert value("rlhfjob_stream_dataset_samples") == 8
    assert value("rlhfjob_train_steps_total") == 3 * 2
    assert value("rlhfjob_param_sync_seconds_count") == 3
    assert value("rlhfjob_param_sync_bytes_total") > 0
    assert value("rlhfjob_samples_per_second") > 0
    assert value("rlhfjob_reward_mean", module="scorer") <= 0
    assert value("rlhfjob_reward_max", module="scorer") == 0
    assert value("rlhfjob_kl", module="scorer") == 0.01
    assert value("rlhfjob_loss", module="learner", name="value_loss") == 0.5
    # Every model call of the 3 episodes, timed on its worker: 2 batches of 4, 2 global batches.
    for model, method, calls in (
        ("actor", "forward_step", 6),
        ("scorer", "forward_step", 6),
        ("learner", "train_step", 6),
    ):
        count = value("rlhfjob_model_step_seconds_count", model=model, method=method)
        assert count == calls, (model, method)
