"""The driver's Prometheus metrics (prefix ``rlhfjob_``), in a registry of their own.

Every series carries ``rlhf_job="<job name>"`` (``RLHFJOB_JOB_NAME``; ``local`` for an
in-process run), so dashboards select a job without depending on how the scrape
relabels targets; ``namespace`` comes from the scrape (a PodMonitor/ServiceMonitor
sets it).

Gauges, set after every episode from its summary (:meth:`JobMetrics.record_episode`):

- ``rlhfjob_episode``, ``rlhfjob_num_episode``: episodes completed, and planned;
- ``rlhfjob_samples_per_second``, ``rlhfjob_episode_duration_seconds``: the last episode's;
- ``rlhfjob_stream_dataset_samples``: samples in the episode's StreamDataset;
- ``rlhfjob_reward_mean|min|max{module}``: from module metrics ``reward_mean|min|max``;
- ``rlhfjob_kl{module}``: from module metrics named ``kl``;
- ``rlhfjob_loss{module,name}``: module metrics named ``loss`` or ``*_loss``;
- ``rlhfjob_module_metric{module,name}``: every numeric module metric;
- ``rlhfjob_eval_metric{name}``: evaluation results (``eval/<name>``);
- ``rlhfjob_staleness{stat=mean|max}``: weight versions between the policy that generated
  the episode's samples and the trainer's (episodes with ``runtime.max_staleness`` >= 1);
- ``rlhfjob_wait_seconds{side=training|generation}``: how long training waited for
  samples, and generation for new weights, in the last episode (``rlhfjob.ahead.waits``);
- ``rlhfjob_restarts``: gang restarts before this process (``RLHFJOB_RESTART_GENERATION``);
- ``rlhfjob_last_checkpoint_episode``: the newest checkpoint's episode, saved or resumed
  from (no series before the first);
- ``rlhfjob_progress_timestamp_seconds``: Unix time this driver started its run or last
  ended an episode (the chart's RLHFJobStuck alert compares it with ``time()``).

Counters: ``rlhfjob_samples_total``, ``rlhfjob_train_steps_total``,
``rlhfjob_param_sync_bytes_total``. Histograms: ``rlhfjob_param_sync_seconds`` (one
observation per episode that synced), ``rlhfjob_model_step_seconds{model,method}``
(the time one model call ran on its worker: inputs in hand to output stored).

Served (:func:`for_driver`) by the driver of a job on the contract's
``RLHFJOB_METRICS_PORT`` when it is non-zero, on ``RLHFJOB_METRICS_HOST`` (default
0.0.0.0; ``rlhfjob run`` sets 127.0.0.1). An in-process run serves only when that
variable is set and non-zero.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from rlhfjob import context
from rlhfjob.comm import admission
from rlhfjob_operator.contract import ENV_JOB_NAME, ENV_METRICS_HOST, ENV_METRICS_PORT

__all__ = ["JobMetrics", "for_driver", "serve"]

PREFIX = "rlhfjob"
JOB_LABEL = "rlhf_job"

# Model calls run from milliseconds (a toy) to minutes (a large generation).
STEP_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
SYNC_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class JobMetrics:
    """The metrics of one job's driver; every series is labelled ``rlhf_job=job``."""

    def __init__(self, job: str) -> None:
        self.job = job
        self.registry = CollectorRegistry(auto_describe=True)

        def gauge(name: str, doc: str, *labels: str) -> Gauge:
            return Gauge(f"{PREFIX}_{name}", doc, [JOB_LABEL, *labels], registry=self.registry)

        def counter(name: str, doc: str) -> Any:
            metric = Counter(f"{PREFIX}_{name}", doc, [JOB_LABEL], registry=self.registry)
            return metric.labels(job)

        self.episode = gauge("episode", "Episodes completed.").labels(job)
        self.num_episode = gauge("num_episode", "Episodes the job runs in all.").labels(job)
        self.samples_per_second = gauge(
            "samples_per_second", "Samples generated per second in the last episode."
        ).labels(job)
        self.episode_seconds = gauge(
            "episode_duration_seconds", "Wall time of the last episode."
        ).labels(job)
        self.dataset_samples = gauge(
            "stream_dataset_samples", "Samples in the last episode's StreamDataset."
        ).labels(job)
        self.restarts = gauge(
            "restarts", "Gang restarts before this driver started (RLHFJOB_RESTART_GENERATION)."
        ).labels(job)
        self.progress_time = gauge(
            "progress_timestamp_seconds",
            "Unix time this driver started its run or last ended an episode.",
        ).labels(job)
        # Labelled on first use: no series until there is a checkpoint.
        self.checkpoint_episode = gauge(
            "last_checkpoint_episode",
            "Episode of the newest checkpoint this run saved or resumed from.",
        )
        self.reward = {
            stat: gauge(f"reward_{stat}", f"Reward {stat} of the last episode.", "module")
            for stat in ("mean", "min", "max")
        }
        self.kl = gauge("kl", "KL divergence reported by a module in the last episode.", "module")
        self.loss = gauge(
            "loss", "Losses reported by a module in the last episode.", "module", "name"
        )
        self.module_metric = gauge(
            "module_metric", "Every numeric metric a module reported.", "module", "name"
        )
        self.eval_metric = gauge("eval_metric", "The last evaluation's metrics.", "name")
        self.staleness = gauge(
            "staleness",
            "Weight versions between the samples' policy and the trainer, last episode.",
            "stat",
        )
        self.wait_seconds = gauge(
            "wait_seconds",
            "Seconds training waited for samples, and generation for weights, last episode.",
            "side",
        )
        self.samples = counter("samples", "Samples generated.")
        self.train_steps = counter("train_steps", "Trainer-flow calls (global batches).")
        self.sync_bytes = counter("param_sync_bytes", "Bytes moved by parameter sync.")
        self.sync_seconds = Histogram(
            f"{PREFIX}_param_sync_seconds",
            "Parameter sync time of one episode (every pair due).",
            [JOB_LABEL],
            buckets=SYNC_BUCKETS,
            registry=self.registry,
        ).labels(job)
        self.step_seconds = Histogram(
            f"{PREFIX}_model_step_seconds",
            "Time one model call ran on its worker.",
            [JOB_LABEL, "model", "method"],
            buckets=STEP_BUCKETS,
            registry=self.registry,
        )

    def start(self, *, num_episode: int, episode: int, restarts: int) -> None:
        """Where a run starts: ``episode`` is the resumed one (0 for a fresh run), and the
        checkpoint it resumed from when it is not 0."""
        self.num_episode.set(num_episode)
        self.episode.set(episode)
        self.restarts.set(restarts)
        self.progress_time.set_to_current_time()
        if episode:
            self.record_checkpoint(episode)

    def record_checkpoint(self, episode: int) -> None:
        """A checkpoint of ``episode`` is complete."""
        self.checkpoint_episode.labels(self.job).set(episode)

    def record_episode(
        self, summary: Mapping[str, Any], *, dataset_samples: int | None = None
    ) -> None:
        """Update every metric from one episode's summary (the dict ``learn()`` returns
        per episode). Keys it does not know are ignored; non-finite or non-numeric
        values are skipped, except that a missing key leaves its metric as it was."""
        job = self.job
        self.progress_time.set_to_current_time()
        if "episode" in summary:
            self.episode.set(summary["episode"])
        if _number(summary.get("samples_per_s")) is not None:
            self.samples_per_second.set(summary["samples_per_s"])
        if _number(summary.get("seconds")) is not None:
            self.episode_seconds.set(summary["seconds"])
        samples = _number(summary.get("samples"))
        if samples is not None:
            self.samples.inc(samples)
        depth = dataset_samples if dataset_samples is not None else samples
        if depth is not None:
            self.dataset_samples.set(depth)
        steps = _number(summary.get("train_steps"))
        if steps is not None:
            self.train_steps.inc(steps)
        sync_seconds = _number(summary.get("sync_seconds"))
        if sync_seconds is not None:
            self.sync_seconds.observe(sync_seconds)
        sync_bytes = _number(summary.get("sync_bytes"))
        if sync_bytes is not None:
            self.sync_bytes.inc(sync_bytes)
        for stat in ("mean", "max"):
            staleness = _number(summary.get(f"staleness_{stat}"))
            if staleness is not None:
                self.staleness.labels(job, stat).set(staleness)
        for side, key in (("training", "train_wait_s"), ("generation", "generation_wait_s")):
            waited = _number(summary.get(key))
            if waited is not None:
                self.wait_seconds.labels(job, side).set(waited)
        for key, raw in summary.items():
            value = _number(raw)
            if value is None or "/" not in key:
                continue
            module, name = key.split("/", 1)
            if module == "eval":
                self.eval_metric.labels(job, name).set(value)
                continue
            self.module_metric.labels(job, module, name).set(value)
            if name in ("reward_mean", "reward_min", "reward_max"):
                self.reward[name.removeprefix("reward_")].labels(job, module).set(value)
            elif name == "kl":
                self.kl.labels(job, module).set(value)
            elif name == "loss" or name.endswith("_loss"):
                self.loss.labels(job, module, name).set(value)

    def observe_steps(self, steps: Iterable[tuple[str, str, float]]) -> None:
        """Model calls as (model, method, seconds)."""
        for model, method, seconds in steps:
            self.step_seconds.labels(self.job, model, method).observe(seconds)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def serve(metrics: JobMetrics, port: int, host: str = "0.0.0.0") -> Any:
    """Serve ``/metrics`` on ``host:port`` in a daemon thread; port 0 picks a free one
    (the returned server's ``server_port``)."""
    server, _thread = start_http_server(port, addr=host, registry=metrics.registry)
    admission.exempt(server.socket.fileno())  # scraped from outside the gang
    return server


_lock = threading.Lock()
_current: JobMetrics | None = None
_server: Any = None


def for_driver() -> JobMetrics | None:
    """This process's metrics, served from the first call on; None where they are off.

    On: the driver of a job whose contract names a non-zero metrics port, or an
    in-process run with ``RLHFJOB_METRICS_PORT`` set and non-zero. Off: workers, and
    everything else. A port already in use is an OSError naming it.
    """
    global _current, _server
    if context.role == "worker":
        return None
    if context.role == "driver":
        if context.env is None or not context.env.metrics_port:
            return None
        job, port = context.env.job_name, context.env.metrics_port
    else:
        raw = os.environ.get(ENV_METRICS_PORT, "")
        try:
            port = int(raw or 0)
        except ValueError:
            raise ValueError(f"{ENV_METRICS_PORT}={raw!r} is not an integer port") from None
        if not port:
            return None
        job = os.environ.get(ENV_JOB_NAME, "local")
    with _lock:
        if _current is None:
            metrics = JobMetrics(job)
            host = os.environ.get(ENV_METRICS_HOST) or "0.0.0.0"
            try:
                _server = serve(metrics, port, host)
            except OSError as exc:
                raise OSError(f"cannot serve metrics on {host}:{port}: {exc}") from exc
            _current = metrics
        return _current
