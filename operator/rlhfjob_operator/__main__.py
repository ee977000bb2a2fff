"""``python -m rlhfjob_operator``: run the operator.

    python -m rlhfjob_operator --kubeconfig ~/.kube/config --namespace team-a --standalone

Credentials: ``--kubeconfig``, else in-cluster (a pod's ServiceAccount), else
$KUBECONFIG / ~/.kube/config. Serves metrics on ``--metrics-port`` (0: off).

With ``--leader-elect`` (the chart's default) it first waits to hold the Lease
(kube/leader.py), answering ``--liveness`` with 200 meanwhile so that the kubelet
keeps a standby alive, then runs kopf. A leader that cannot renew within
``--leader-elect-renew-deadline`` exits 1 at once, threads mid-request or not: it
must stop before the lease it held runs out on a standby's clock. A stop signal
releases the Lease, so that a standby takes over at its next try.

SIGTERM or SIGINT at any moment after the interpreter has started stops the
operator with exit code 0: during the imports and setup (no handler has run,
nothing to undo), while kopf starts, or while it runs (kopf finishes what it is
doing). A launcher that starts it with those signals blocked (the tests do) has
them delivered once the handler is in place, so not even the interpreter's own
start-up is a window in which a stop kills the process instead.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from types import FrameType

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m rlhfjob_operator", description="Run the RLHFJob operator (kopf)."
    )
    p.add_argument("--kubeconfig", type=Path, help="kubeconfig file; default: in-cluster")
    scope = p.add_mutually_exclusive_group()
    scope.add_argument(
        "-n", "--namespace", action="append", default=[], help="watch this namespace (repeatable)"
    )
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch the cluster")
    p.add_argument(
        "--standalone", action="store_true", help="no peering with other operator instances"
    )
    p.add_argument("--metrics-host", default="0.0.0.0")
    p.add_argument("--metrics-port", type=int, default=8080, help="0 turns metrics off")
    p.add_argument("--liveness", help="kopf liveness endpoint, e.g. http://0.0.0.0:8081/healthz")
    p.add_argument(
        "--progress-interval",
        type=float,
        default=15.0,
        help="seconds between reads of a running driver's metrics into status.progress",
    )
    p.add_argument(
        "--resync-interval",
        type=float,
        default=60.0,
        help="seconds between reconciliations of every unfinished job, whatever happened",
    )
    p.add_argument(
        "--kube-api-qps",
        type=float,
        default=100.0,
        help="client-side limit on requests a second to the API server (<= 0: none)",
    )
    p.add_argument(
        "--kube-api-burst", type=int, default=200, help="requests allowed at once above the qps"
    )
    election = p.add_argument_group(
        "leader election",
        "replicas compete for a coordination.k8s.io Lease; only its holder reconciles "
        "(kube/leader.py)",
    )
    election.add_argument(
        "--leader-elect", action="store_true", help="run only while holding the Lease"
    )
    election.add_argument(
        "--leader-elect-resource-namespace",
        help="the Lease's namespace; default: the pod's own (its ServiceAccount's)",
    )
    election.add_argument("--leader-elect-resource-name", default="rlhfjob-operator")
    election.add_argument(
        "--leader-elect-lease-duration",
        type=float,
        default=15.0,
        help="seconds a standby waits on an unchanged Lease before taking it",
    )
    election.add_argument(
        "--leader-elect-renew-deadline",
        type=float,
        default=10.0,
        help="seconds without a renewal after which the leader stops (exit 1)",
    )
    election.add_argument(
        "--leader-elect-retry-period",
        type=float,
        default=2.0,
        help="seconds between a standby's tries and between the leader's renewals",
    )
    p.add_argument("--backoff-base", type=float, default=10.0, help="first restart delay (s)")
    p.add_argument("--backoff-max", type=float, default=300.0, help="longest restart delay (s)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


class StopRequest:
    """Remembers a stop signal until kopf's own handlers take over.

    Before kopf's loop runs, the handler only records the signal (raising from a
    signal handler would land in whatever import or setup code runs then) and the
    operator exits before starting kopf. While kopf starts, it cancels kopf's
    task through ``call_soon_threadsafe``, the one loop call that is safe from a
    signal handler; kopf stops its tasks on cancellation as on its own signals.
    (Not kopf's ``stop_flag``: a stop by kopf's signal handlers then leaves the
    flag's waiter pending and costs a 5 s wait for "hung" tasks.) asyncio resets
    the signals to SIG_DFL as kopf's loop closes: :meth:`ignore_further` covers
    the last moments of the exit.
    """

    def __init__(self) -> None:
        self.signal: signal.Signals | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    def install(self) -> None:
        for sig in _STOP_SIGNALS:
            signal.signal(sig, self._handle)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        del frame
        self.signal = signal.Signals(signum)
        if self._loop is not None and self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)

    def cancels_current_task(self) -> bool:
        """From now on a signal cancels the running task; False if one came already."""
        task = asyncio.current_task()
        assert task is not None, "called outside a task"
        self._loop, self._task = asyncio.get_running_loop(), task
        return self.signal is None

    def ignore_further(self) -> None:
        self._loop = self._task = None
        for sig in _STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)


def main(argv: list[str] | None = None) -> int:
    # First of all: kopf, kubernetes and pydantic take a second or more to import on a
    # busy node, and SIGTERM's default action would kill the process meanwhile.
    stop = StopRequest()
    stop.install()
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return _operate(args, stop)
    finally:
        stop.ignore_further()


_SERVICEACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def _lease_namespace(args: argparse.Namespace) -> str:
    if args.leader_elect_resource_namespace:
        return str(args.leader_elect_resource_namespace)
    try:
        return _SERVICEACCOUNT_NAMESPACE.read_text().strip()
    except OSError:
        raise ValueError(
            "--leader-elect-resource-namespace: not in a pod (no "
            f"{_SERVICEACCOUNT_NAMESPACE}), so name the namespace of the Lease"
        ) from None


@contextlib.asynccontextmanager
async def _standby_health(url: str | None) -> AsyncIterator[None]:
    """Answer 200 at kopf's liveness URL while standing by (kopf serves it once it runs)."""
    if url is None:
        yield
        return
    from aiohttp import web

    parts = urllib.parse.urlsplit(url)

    async def healthy(request: web.Request) -> web.Response:
        del request
        return web.Response(text="standing by for the lease\n")

    app = web.Application()
    app.router.add_get(parts.path or "/", healthy)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, parts.hostname, parts.port, reuse_address=True).start()
    try:
        yield
    finally:
        await runner.cleanup()


def _lost_leadership(why: str) -> None:
    logging.getLogger("rlhfjob_operator").critical("lost the lease: %s; exiting now", why)
    logging.shutdown()
    os._exit(1)


def _operate(args: argparse.Namespace, stop: StopRequest) -> int:
    # Imported only now, with the stop handler in place (see main).
    import kopf
    import yaml
    from kubernetes.config import ConfigException

    from rlhfjob_operator import metrics
    from rlhfjob_operator.contract import Backoff
    from rlhfjob_operator.kube import leader
    from rlhfjob_operator.kube.client import KubeClient, load_configuration
    from rlhfjob_operator.kube.handlers import build_registry
    from rlhfjob_operator.kube.reconciler import Reconciler

    log = logging.getLogger("rlhfjob_operator")
    if args.kubeconfig is not None:
        # kopf's login_via_client reads the same file through the official client.
        os.environ["KUBECONFIG"] = str(args.kubeconfig)
    try:
        configuration = load_configuration(args.kubeconfig)
    except (ConfigException, yaml.YAMLError, OSError) as exc:
        where = args.kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        print(
            f"rlhfjob operator: no cluster credentials from {where}: {exc}; pass --kubeconfig "
            "with a valid kubeconfig, or run in a pod with a ServiceAccount",
            file=sys.stderr,
        )
        return 2
    try:
        client = KubeClient(configuration, qps=args.kube_api_qps, burst=args.kube_api_burst)
    except ValueError as exc:
        print(f"rlhfjob operator: --kube-api-burst: {exc}", file=sys.stderr)
        return 2
    elector: leader.LeaderElector | None = None
    if args.leader_elect:
        try:
            elector = leader.LeaderElector(
                # A client of its own, unthrottled: a renewal never waits behind reconciles.
                KubeClient(configuration, qps=0),
                namespace=_lease_namespace(args),
                name=args.leader_elect_resource_name,
                identity=leader.default_identity(),
                timing=leader.Timing(
                    lease_seconds=args.leader_elect_lease_duration,
                    renew_deadline_seconds=args.leader_elect_renew_deadline,
                    retry_seconds=args.leader_elect_retry_period,
                ),
            )
        except ValueError as exc:
            print(f"rlhfjob operator: leader election: {exc}", file=sys.stderr)
            return 2
    reconciler = Reconciler(
        client,
        backoff=Backoff(base_seconds=args.backoff_base, cap_seconds=args.backoff_max),
        progress_interval=args.progress_interval,
    )
    registry = build_registry(reconciler, resync_interval=args.resync_interval)
    if args.metrics_port:
        server = metrics.serve(args.metrics_port, args.metrics_host)
        log.info("metrics on http://%s:%d/metrics", args.metrics_host, server.server_port)
    if stop.signal is not None:
        log.info("%s before the operator started: exiting", stop.signal.name)
        return 0

    async def operate() -> None:
        if not stop.cancels_current_task():
            return
        renewal = None
        if elector is not None:
            async with _standby_health(args.liveness):
                await leader.acquire(elector)
            log.info(
                "leading: lease %s/%s held as %s", elector.namespace, elector.name, elector.identity
            )
            renewal = leader.renew_in_background(elector, on_lost=_lost_leadership)
        metrics.LEADER.set(1)
        try:
            await kopf.operator(
                registry=registry,
                standalone=args.standalone,
                namespaces=args.namespace,
                clusterwide=args.all_namespaces or not args.namespace,
                liveness_endpoint=args.liveness,
            )
        finally:
            metrics.LEADER.set(0)
            if elector is not None and renewal is not None:
                elector.stop()
                renewal.join(timeout=5)
                elector.release()

    try:
        asyncio.run(operate())
    except asyncio.CancelledError:
        # A stop signal while standing by for the Lease, or while kopf started, before
        # its own handlers took over.
        log.info("stop signal before kopf ran: stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
