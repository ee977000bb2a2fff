"""``python -m rlhfjob_operator``: run the operator.

    python -m rlhfjob_operator --kubeconfig ~/.kube/config --namespace team-a --standalone

Credentials: ``--kubeconfig``, else in-cluster (a pod's ServiceAccount), else
$KUBECONFIG / ~/.kube/config. Serves metrics on ``--metrics-port`` (0: off).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

import kopf

from rlhfjob_operator import metrics
from rlhfjob_operator.kube.client import KubeClient, load_configuration
from rlhfjob_operator.kube.handlers import build_registry
from rlhfjob_operator.kube.reconcile import Backoff
from rlhfjob_operator.kube.reconciler import Reconciler


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
        "--timer-interval", type=float, default=2.0, help="seconds between deadline/TTL checks"
    )
    p.add_argument("--backoff-base", type=float, default=10.0, help="first restart delay (s)")
    p.add_argument("--backoff-max", type=float, default=300.0, help="longest restart delay (s)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def _exit_before_start(signum: int, frame: object) -> None:
    del frame
    logging.getLogger("rlhfjob_operator").info(
        "%s before the operator started: exiting", signal.Signals(signum).name
    )
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.kubeconfig is not None:
        # kopf's login_via_client reads the same file through the official client.
        os.environ["KUBECONFIG"] = str(args.kubeconfig)
    client = KubeClient(load_configuration(args.kubeconfig))
    reconciler = Reconciler(
        client, backoff=Backoff(base_seconds=args.backoff_base, cap_seconds=args.backoff_max)
    )
    registry = build_registry(reconciler, timer_interval=args.timer_interval)
    if args.metrics_port:
        server = metrics.serve(args.metrics_port, args.metrics_host)
        logging.getLogger("rlhfjob_operator").info(
            "metrics on http://%s:%d/metrics", args.metrics_host, server.server_port
        )
    # A SIGTERM that lands before kopf installs its own handlers (a pod deleted right after
    # it started) ends the operator cleanly: nothing has been reconciled yet, and a restart
    # resumes from kopf's annotations anyway. kopf's handlers replace this one.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_before_start)
    kopf.run(
        registry=registry,
        standalone=args.standalone,
        namespaces=args.namespace,
        clusterwide=args.all_namespaces or not args.namespace,
        liveness_endpoint=args.liveness,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
