"""The driver's metrics: summary -> metric updates, the exposition format, the dashboard."""

from __future__ import annotations

import json
import re
import time
import urllib.request

import pytest
from dashboards import DASHBOARD, dashboard_exprs, metric_names, served_families
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from rlhfjob.metrics import JobMetrics, serve
from rlhfjob_operator import metrics as operator_metrics

SUMMARY = {
    "episode": 3,
    "samples": 8,
    "train_steps": 4,
    "sync_seconds": 0.02,
    "sync_bytes": 1024,
    "reward/reward_mean": 0.5,
    "reward/reward_min": 0.1,
    "reward/reward_max": 0.9,
    "reward/kl": 0.03,
    "ppo_policy/policy_loss": -0.2,
    "ppo_policy/kl_loss": 0.01,
    "ppo_policy/clipfrac": 0.1,
    "ppo_value/value_loss": 1.5,
    "eval/reward": 0.7,
    "seconds": 2.0,
    "samples_per_s": 4.0,
}


def test_metric_names_extracted_from_promql():
    expr = (
        "histogram_quantile(0.95, sum by (le, model) (rate(rlhfjob_model_step_seconds_bucket"
        '{namespace="$namespace", rlhf_job="$job"}[$__rate_interval])))'
    )
    assert metric_names(expr) == {"rlhfjob_model_step_seconds"}
    assert metric_names('100 * rlhfjob_episode{a="b"} / rlhfjob_num_episode') == {
        "rlhfjob_episode",
        "rlhfjob_num_episode",
    }
    assert metric_names('label_values(rlhfjob_episode{namespace="$x"}, rlhf_job)') == {
        "rlhfjob_episode"
    }


def test_summary_updates_every_metric():
    m = JobMetrics("job-a")
    began = time.time()
    m.start(num_episode=10, episode=2, restarts=1)
    started = m.registry.get_sample_value(
        "rlhfjob_progress_timestamp_seconds", {"rlhf_job": "job-a"}
    )
    assert started is not None and began <= started <= time.time()
    m.record_episode(SUMMARY, dataset_samples=6)
    m.observe_steps([("policy", "forward_step", 0.02), ("policy", "forward_step", 0.2)])
    get = m.registry.get_sample_value
    job = {"rlhf_job": "job-a"}
    assert get("rlhfjob_episode", job) == 3
    assert get("rlhfjob_num_episode", job) == 10
    assert get("rlhfjob_restarts", job) == 1
    assert started <= get("rlhfjob_progress_timestamp_seconds", job) <= time.time()
    assert get("rlhfjob_samples_per_second", job) == 4.0
    assert get("rlhfjob_episode_duration_seconds", job) == 2.0
    assert get("rlhfjob_samples_total", job) == 8
    assert get("rlhfjob_train_steps_total", job) == 4
    assert get("rlhfjob_stream_dataset_samples", job) == 6
    assert get("rlhfjob_param_sync_bytes_total", job) == 1024
    assert get("rlhfjob_param_sync_seconds_count", job) == 1
    assert get("rlhfjob_param_sync_seconds_sum", job) == pytest.approx(0.02)
    for stat, value in (("mean", 0.5), ("min", 0.1), ("max", 0.9)):
        assert get(f"rlhfjob_reward_{stat}", {**job, "module": "reward"}) == value
    assert get("rlhfjob_kl", {**job, "module": "reward"}) == 0.03
    assert get("rlhfjob_loss", {**job, "module": "ppo_policy", "name": "policy_loss"}) == -0.2
    assert get("rlhfjob_loss", {**job, "module": "ppo_policy", "name": "kl_loss"}) == 0.01
    assert get("rlhfjob_loss", {**job, "module": "ppo_value", "name": "value_loss"}) == 1.5
    assert get("rlhfjob_loss", {**job, "module": "ppo_policy", "name": "clipfrac"}) is None
    assert get("rlhfjob_module_metric", {**job, "module": "ppo_policy", "name": "clipfrac"}) == 0.1
    assert get("rlhfjob_eval_metric", {**job, "name": "reward"}) == 0.7
    step = {**job, "model": "policy", "method": "forward_step"}
    assert get("rlhfjob_model_step_seconds_count", step) == 2
    assert get("rlhfjob_model_step_seconds_bucket", {**step, "le": "0.025"}) == 1

    # Counters add up over episodes; gauges hold the last episode's value.
    m.record_episode({**SUMMARY, "episode": 4, "reward/reward_mean": 0.6})
    assert get("rlhfjob_episode", job) == 4
    assert get("rlhfjob_samples_total", job) == 16
    assert get("rlhfjob_stream_dataset_samples", job) == 8  # no dataset given: the samples
    assert get("rlhfjob_reward_mean", {**job, "module": "reward"}) == 0.6


def test_summary_without_training_or_with_odd_values():
    m = JobMetrics("j")
    m.record_episode(
        {"episode": 1, "samples": 0, "samples_per_s": float("inf"), "x/flag": True, "x/s": "a"}
    )
    get = m.registry.get_sample_value
    assert get("rlhfjob_episode", {"rlhf_job": "j"}) == 1
    assert get("rlhfjob_samples_per_second", {"rlhf_job": "j"}) == 0  # inf skipped
    assert get("rlhfjob_param_sync_seconds_count", {"rlhf_job": "j"}) == 0
    assert get("rlhfjob_module_metric", {"rlhf_job": "j", "module": "x", "name": "flag"}) is None


def test_exposition_parses_and_follows_conventions():
    m = JobMetrics("job-a")
    m.record_episode(SUMMARY)
    m.observe_steps([("policy", "forward_step", 0.02)])
    families = list(text_string_to_metric_families(generate_latest(m.registry).decode()))
    assert families
    for family in families:
        assert family.name.startswith("rlhfjob_"), family.name
        for sample in family.samples:
            assert sample.labels.get("rlhf_job") == "job-a", sample
            if family.type == "counter":
                assert sample.name in (f"{family.name}_total", f"{family.name}_created")
    types = {f.name: f.type for f in families}
    assert types["rlhfjob_model_step_seconds"] == "histogram"
    assert types["rlhfjob_param_sync_seconds"] == "histogram"
    assert types["rlhfjob_param_sync_bytes"] == "counter"
    assert types["rlhfjob_samples"] == "counter"


def test_every_dashboard_metric_is_exported():
    """Quick check without processes; tests/runtime/test_metrics.py scrapes a real job."""
    m = JobMetrics("j")
    served = served_families(generate_latest(m.registry).decode())
    wanted = set().union(*(metric_names(e) for e in dashboard_exprs()))
    assert wanted and all(name.startswith("rlhfjob_") for name in wanted), wanted
    assert wanted <= set(served), wanted - set(served)
    on_operator = set().union(*(metric_names(e) for e in dashboard_exprs(source="operator")))
    operator_served = served_families(generate_latest(operator_metrics.REGISTRY).decode())
    assert on_operator and on_operator <= set(operator_served), on_operator - set(operator_served)


def test_dashboard_has_variables_and_selectors():
    dash = json.loads(DASHBOARD.read_text())
    assert {v["name"] for v in dash["templating"]["list"]} >= {"namespace", "job"}
    assert 36 <= dash["schemaVersion"] <= 41
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for word in ("progress", "reward", "loss", "kl", "throughput", "sync", "restarts", "latency"):
        assert word in titles, word
    for expr in dashboard_exprs():
        if expr.startswith("label_values("):
            continue
        for selector in re.findall(r"rlhfjob_\w+(\{[^}]*\})?", expr):
            assert selector == '{namespace="$namespace", rlhf_job="$job"}', expr


def test_serve_binds_and_answers():
    m = JobMetrics("j")
    m.record_episode({"episode": 2})
    server = serve(m, 0, "127.0.0.1")
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    assert served_families(text)["rlhfjob_episode"].samples[0].value == 2


def test_engine_in_process_feeds_the_metrics(monkeypatch):
    """The Engine records each episode and every model call's run time (LocalExecutor)."""
    from toys import Actor, Learner, Scorer, prompts

    from rlhfjob import Engine, Environment, Trainer
    from rlhfjob import metrics as prom

    m = JobMetrics("local")
    monkeypatch.setattr(prom, "for_driver", lambda: m)
    actor, scorer, learner = Actor("actor"), Scorer("scorer"), Learner("learner")

    def env_flow(batch):
        return scorer.forward_step(actor.forward_step(batch))

    def trainer_flow(batch):
        learner.train_step(batch)

    runtime = {"num_episode": 2, "sample_per_episode": 4, "generation_batch_size": 2}
    runtime |= {"train_micro_batch_size": 2, "train_global_batch_size": 4}
    models = {"actor": {}, "scorer": {}, "learner": {"trainable": True}}
    Engine(
        Environment(env_flow), Trainer(trainer_flow), config={"runtime": runtime, "models": models}
    ).set_parameter_sync(learner, actor).set_dataset(prompts(8)).learn(progress=False)
    get = m.registry.get_sample_value
    job = {"rlhf_job": "local"}
    assert get("rlhfjob_episode", job) == 2
    assert get("rlhfjob_num_episode", job) == 2
    assert get("rlhfjob_restarts", job) == 0
    assert get("rlhfjob_reward_mean", {**job, "module": "scorer"}) is not None
    calls = {
        "actor": ("forward_step", 4),
        "scorer": ("forward_step", 4),
        "learner": ("train_step", 2),
    }
    for model, (method, count) in calls.items():
        labels = {**job, "model": model, "method": method}
        assert get("rlhfjob_model_step_seconds_count", labels) == count, model


def test_in_process_metrics_are_off_without_the_variable(monkeypatch):
    from rlhfjob import metrics as prom

    monkeypatch.delenv("RLHFJOB_METRICS_PORT", raising=False)
    assert prom.for_driver() is None
    monkeypatch.setenv("RLHFJOB_METRICS_PORT", "0")
    assert prom.for_driver() is None
    monkeypatch.setenv("RLHFJOB_METRICS_PORT", "x")
    with pytest.raises(ValueError, match="RLHFJOB_METRICS_PORT"):
        prom.for_driver()
