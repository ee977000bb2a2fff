"""Entry point of every process of a job: ``python -m rlhfjob.worker``.

The role comes from the environment contract (``rlhfjob_operator.plan``).
The driver runs the user's entrypoint (``spec.entrypoint``) as ``__main__``;
its ``Engine.learn()`` drives the model workers over RPC. A model worker
imports the same entrypoint as ``__mp_main__`` (as multiprocessing's spawn
does), so classes defined there unpickle in the worker; top-level code runs
until ``Engine.learn()``, which stops the import there. Guard the training
code with ``if __name__ == "__main__":`` to skip it in workers entirely.
With ``spec.entrypoint.engine`` there is no user code: every process imports
``rlhfjob.algorithms.engines`` and the driver runs ``learn_from_spec``.

Exit codes: 0 success; 78 (``EXIT_PERMANENT``) a failure a restart cannot fix
(bad spec, a flow or config error, an exception in user code); 75
(``EXIT_RETRYABLE``) a peer died or never came, or the rendezvous was lost: a
restart of the gang can succeed; 79 (``EXIT_DISRUPTED``) it was SIGTERMed and
stopped at a safe point, after an emergency checkpoint (``rlhfjob.comm.stopping``).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import signal
import sys
import traceback
import types

import torch

from rlhfjob_operator.contract import (
    EXIT_DISRUPTED,
    EXIT_OK,
    EXIT_PERMANENT,
    EXIT_RETRYABLE,
    entrypoint_path,
)
from rlhfjob_operator.spec import Entrypoint, SpecError, load_job

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _load_code(entry: Entrypoint, spec_path: str) -> tuple[types.CodeType, str]:
    path = entrypoint_path(entry.file, spec_path)
    if path is not None:
        sys.path.insert(0, str(path.parent))
        return compile(path.read_text(), str(path), "exec"), str(path)
    assert entry.module is not None
    spec = importlib.util.find_spec(entry.module)
    if spec is None or spec.loader is None:
        raise SpecError(f"spec.entrypoint.module {entry.module!r} cannot be imported")
    code = spec.loader.get_code(entry.module)  # type: ignore[attr-defined]
    if code is None:
        raise SpecError(f"spec.entrypoint.module {entry.module!r} has no code to run")
    return code, spec.origin or entry.module


def _exec_entrypoint(entry: Entrypoint, spec_path: str, *, as_main: bool) -> None:
    from rlhfjob import context

    if entry.engine is not None:
        # No file of the user's: the engines' module holds every class the workers run.
        from rlhfjob.algorithms import engines

        if as_main:
            engines.learn_from_spec(entry.engine)
        return
    code, filename = _load_code(entry, spec_path)
    module = types.ModuleType("__main__" if as_main else "__mp_main__")
    module.__file__ = filename
    module.__dict__["__builtins__"] = __builtins__
    # Pickles of classes defined in the entrypoint name __main__: make it resolve here too.
    sys.modules["__main__"] = module
    sys.modules["__mp_main__"] = module
    sys.argv = [filename, *entry.args]
    with contextlib.suppress(context.StopEntrypoint):
        exec(code, module.__dict__)


def _end_with_the_launcher() -> None:
    """Ask Linux to SIGTERM this process when the process that started it dies.

    ``rlhfjob run`` starts workers in sessions of their own (so it can stop each
    group), which also keeps them alive when the launcher itself is SIGKILLed; this
    takes them down with it instead of leaving a gang training with nobody to stop
    it. The ppid check catches a parent that died between reading it and the request;
    one that died earlier, while this process imported torch, is not caught. In a pod
    the worker is the container's first process, whose parent never dies: a no-op.
    Elsewhere than Linux (no prctl) nothing is asked.
    """
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        return
    if parent != 1 and os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def main() -> int:
    _end_with_the_launcher()
    from rlhfjob import context, timing
    from rlhfjob.checkpoint import RNGStream
    from rlhfjob.comm import heartbeat, rendezvous, stopping
    from rlhfjob.comm.env import WorkerEnv
    from rlhfjob.comm.errors import StartupError
    from rlhfjob.executor.rpc import WorkerFailed
    from rlhfjob.executor.worker import WorkerRuntime

    timing.mark("started", at=timing.process_started())
    timing.mark("imported torch and rlhfjob")
    try:
        env = WorkerEnv.from_environ()
        job = load_job(env.spec_path)
    except (ValueError, SpecError) as exc:
        print(f"rlhfjob worker: {exc}", file=sys.stderr)
        return EXIT_PERMANENT
    context.env, context.job = env, job
    stopping.take_sigterm(env.name)
    # Intra-op threads from the spec's num_cpu (default 1): processes sharing a host must
    # not each spin a thread per core.
    cpus = sum(job.spec.models[m].num_cpu for m in env.models if m in job.spec.models)
    torch.set_num_threads(max(1, cpus))
    if not env.is_driver:
        context.role = "worker"
        try:
            _exec_entrypoint(job.spec.entrypoint, env.spec_path, as_main=False)
        except BaseException:
            print(f"rlhfjob {env.name}: importing the entrypoint failed:", file=sys.stderr)
            traceback.print_exc()
            return EXIT_PERMANENT
        timing.mark("imported the entrypoint")
    if not env.is_driver:
        # Only module hooks draw random numbers in a model worker: their streams may stay
        # loaded between calls (see RNGStream), which saves four numpy state copies a call.
        RNGStream.keep_resident()
        # Ready before RPC starts: the driver may call the moment rendezvous completes.
        WorkerRuntime.install(env)
    try:
        session = rendezvous.start(env)
    except StartupError as exc:
        print(f"rlhfjob {env.name}: {exc}", file=sys.stderr)
        return EXIT_RETRYABLE
    context.peers = session.peers
    stopping.arm(session)
    heartbeat.watch(session, lambda msg: heartbeat.fail_fast(msg, code=EXIT_RETRYABLE))
    timing.mark("rendezvous, gloo and RPC up")
    if not env.is_driver:
        session.stop(graceful=True)  # returns once the driver is done
        return EXIT_DISRUPTED if stopping.stopped() else EXIT_OK
    context.role = "driver"
    try:
        _exec_entrypoint(job.spec.entrypoint, env.spec_path, as_main=True)
    except SystemExit as exc:
        if exc.code not in (0, None):
            heartbeat.fail_fast(f"the entrypoint exited with {exc.code}", code=EXIT_PERMANENT)
    except stopping.Disrupted as exc:
        print(f"rlhfjob: job {env.job_name} {exc}", file=sys.stderr, flush=True)
        session.stop(graceful=True)
        return EXIT_DISRUPTED
    except WorkerFailed as exc:
        print(f"rlhfjob: {exc}", file=sys.stderr)
        heartbeat.fail_fast(
            f"job {env.job_name} failed: {str(exc).splitlines()[0]}",
            code=EXIT_RETRYABLE if exc.retryable else EXIT_PERMANENT,
        )
    except BaseException as exc:
        traceback.print_exc()
        heartbeat.fail_fast(
            f"job {env.job_name} failed in the entrypoint: {type(exc).__name__}: {exc}",
            code=EXIT_PERMANENT,
        )
    sys.stdout.flush()
    session.stop(graceful=True)
    return EXIT_OK


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
