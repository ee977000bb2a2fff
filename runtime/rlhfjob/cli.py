"""The ``rlhfjob`` command."""

from __future__ import annotations

import argparse
import sys

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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
