"""The ``rlhfjob`` command: validate a job, run one on this machine (the local launcher), or
print a checkpoint's prompt ledger."""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType

from rlhfjob_operator.contract import DEFAULT_BACKOFF, EXIT_PERMANENT, Backoff, EntrypointNotFound
from rlhfjob_operator.spec import SpecError, load_job_config


def _validate(args: argparse.Namespace) -> int:
    try:
        config = load_job_config(args.path)
    except SpecError as exc:
        print(f"{args.path}: {exc}", file=sys.stderr)
        return 2
    models = ", ".join(sorted(config.models)) or "none"
    print(f"{args.path}: valid ({config.runtime.num_episode} episodes; models: {models})")
    return 0


def _ledger(args: argparse.Namespace) -> int:
    from rlhfjob_operator.ledger import format_ledger, read_ledger

    try:
        checkpoint, entries = read_ledger(args.path)
    except ValueError as exc:
        print(f"rlhfjob ledger: {exc}", file=sys.stderr)
        return 2
    print(format_ledger(checkpoint, entries))
    return 0


# What a terminal, systemd or `timeout` sends to stop a command.
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class _Stopped(BaseException):
    """SIGTERM or SIGHUP reached ``rlhfjob run``: unwinds run_job so that its cleanup
    (stop every process group, sweep the job's shared memory, remove its scratch) runs.
    Python's default for SIGTERM ends the process without that, which left the gang's
    processes, each in a session of its own, training with nobody to stop them."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _stop_on_signal(signum: int, frame: FrameType | None) -> None:
    del frame
    # One unwinding is enough: a second signal must not cut the cleanup short.
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    raise _Stopped(signum)


def _run(args: argparse.Namespace) -> int:
    from rlhfjob_operator.local import run_job

    for sig in _STOP_SIGNALS:
        signal.signal(sig, _stop_on_signal)
    try:
        result = run_job(
            args.path,
            checkpoint_dir=args.checkpoint_dir,
            max_restarts=args.max_restarts,
            backoff=Backoff(base_seconds=args.backoff_base, cap_seconds=args.backoff_max),
            timeout=args.timeout,
        )
    except (SpecError, EntrypointNotFound) as exc:
        print(f"{args.path}: {exc}", file=sys.stderr)
        return EXIT_PERMANENT
    except _Stopped as stop:
        name = signal.Signals(stop.signum).name
        print(f"rlhfjob run: stopped by {name}: every process of the job ended", file=sys.stderr)
        return 128 + stop.signum
    if result.code != 0:
        print(f"rlhfjob run: failed: {result.message}", file=sys.stderr)
    return result.code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlhfjob", description="RLHF training jobs with ChatLearn's Custom Flow API."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    validate = sub.add_parser(
        "validate", help="check a job config or RLHFJob manifest against the schema"
    )
    validate.add_argument("path", help="YAML file: {runtime, models} or a whole RLHFJob")
    validate.set_defaults(func=_validate)
    run = sub.add_parser(
        "run",
        help="run an RLHFJob on this machine: a driver and one process per model replica",
        description=(
            "Start the job's driver and one worker process per model replica (a colocation "
            "group shares one) with the same environment a pod gets, and wait for the driver. "
            "The driver runs spec.entrypoint, whose Engine.learn() drives the workers over "
            "torch RPC. Worker output is prefixed with [role-replica]. If any process fails, "
            "all are stopped and the gang restarts from the last checkpoint, with backoff, up "
            "to --max-restarts. Exit codes: 0 success, 78 a permanent failure (bad spec, user "
            "error), 75 a retryable failure with no restarts left."
        ),
    )
    run.add_argument("path", help="the RLHFJob manifest (the same YAML kubectl applies)")
    run.add_argument(
        "--checkpoint-dir",
        help="checkpoint directory (default: spec.runtime.data_checkpoint_path)",
    )
    run.add_argument(
        "--max-restarts",
        type=int,
        default=None,
        help="gang restarts after a retryable failure (default: spec.runPolicy.backoffLimit)",
    )
    run.add_argument(
        "--backoff-base",
        type=float,
        default=DEFAULT_BACKOFF.base_seconds,
        help="seconds before the first restart, doubling with each (default: %(default)s, "
        "as the operator's)",
    )
    run.add_argument(
        "--backoff-max",
        type=float,
        default=DEFAULT_BACKOFF.cap_seconds,
        help="the longest delay between restarts (default: %(default)s)",
    )
    run.add_argument(
        "--timeout", type=float, default=None, help="seconds each attempt may run (default: none)"
    )
    run.set_defaults(func=_run)
    ledger = sub.add_parser(
        "ledger",
        help="print a checkpoint's prompt ledger: each episode's prompts and weight versions",
        description=(
            "Print the prompt ledger of the newest complete checkpoint under CHECKPOINT_DIR "
            "(or of that checkpoint itself): per episode, the prompts its env flow took, "
            "the weight version it generated with and the one it trained with; then how "
            "many responses each prompt was generated and trained on."
        ),
    )
    ledger.add_argument("path", metavar="CHECKPOINT_DIR")
    ledger.set_defaults(func=_ledger)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
