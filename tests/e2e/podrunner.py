"""A PodHandler for the test kubelet that really runs pods: each as a local process.

    runner = PodRunner(REPO)
    with cluster.kubelet.using(runner):
        ...                                   # pods bound now run for real
    runner.close()                            # every process stopped and reaped

For each pod bound to a test node, on a thread of its own:

- **network**: like a CNI, every pod gets its own IP, here a loopback address
  ``127.<b>.x.y`` (``b`` drawn per runner; all of 127.0.0.0/8 is loopback on
  Linux, so nothing leaves the host). A pod's DNS name
  ``<hostname>.<subdomain>.<namespace>.svc[.cluster.local]`` (what a headless
  Service gives it) resolves to that address: the names are rewritten to it in
  the environment, command and arguments, and one name keeps its address for
  the runner's life, so a gang's peers agree on it whichever of them starts
  first. Ports stay the containers' own, as behind a CNI. Processes share the
  host's network namespace, so the runner tells them what a pod's namespace
  would leave them: ``RLHFJOB_METRICS_HOST`` is the pod's address and gloo and
  TensorPipe listen on ``lo`` (``GLOO_SOCKET_IFNAME``, ``TP_SOCKET_IFNAME``).
- **volumes**: a ConfigMap or Secret volume becomes a directory holding its
  keys as files (``items`` honoured), an emptyDir a fresh directory (removed
  with the pod), a persistentVolumeClaim the ``hostPath`` of the
  PersistentVolume the real controller-manager bound it to (``subPath``
  honoured; so checkpoints outlive pods), a hostPath volume its path. A
  path under a ``mountPath`` in the environment, command, arguments or
  ``workingDir`` is rewritten to the host directory; a volume at /tmp also
  becomes ``TMPDIR``. /dev/shm stays the host's: when a pod stops, the
  runner removes the shared-memory segments the runtime names for that
  worker (``rlhfjob_operator.contract.shm_prefix``), as a kubelet drops a pod's
  memory-backed emptyDir.
- **environment**: exactly the container's ``env``: ``value``, and
  ``valueFrom`` ``secretKeyRef`` / ``configMapKeyRef`` (read from the API
  server; ``optional`` honoured; a missing object or key leaves the pod
  Pending with ``CreateContainerConfigError``, retried as a kubelet does
  until it appears or the pod is deleted) and ``fieldRef`` (metadata.name,
  namespace, uid, labels['k'], annotations['k'], spec.nodeName,
  spec.serviceAccountName, status.podIP, status.hostIP); plus the runtime
  image's own (images/runtime-cpu.Dockerfile: HOME on the pod's /tmp,
  OMP_NUM_THREADS=1, PYTHONUNBUFFERED=1) and ``PATH``. ``envFrom``,
  ``resourceFieldRef`` and ``$(VAR)`` expansion are not emulated: such a pod
  is held with a message saying so.
- **image**: every image is this checkout: ``python`` is this interpreter,
  the working directory is the repository (the image's WORKDIR, which holds
  examples/), no command means the image's ENTRYPOINT
  (``python -m rlhfjob.worker``). Users, capabilities, resource limits and
  read-only root filesystems are not enforced.
- **lifecycle**: the command runs in a process group of its own, output to a
  log (:meth:`PodRunner.log`); the pod is reported Running with its IP, then
  Succeeded or Failed with the real exit code (128 + n for a signal, as a
  kubelet reports it) and the termination message: a kubelet mounts a file at
  the container's terminationMessagePath; here it is a file of the pod's,
  named by ``RLHFJOB_TERMINATION_LOG`` (``rlhfjob_operator.contract``), and
  its first 4096 bytes become ``state.terminated.message``. Deleting the pod
  sends SIGTERM to the group, SIGKILL after ``grace`` seconds (at most the
  pod's terminationGracePeriodSeconds), and reaps the process before the
  kubelet confirms the deletion.

Only single-container pods without init containers are run; others are held
with a message.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes.client.rest import ApiException

from cluster import TestKubelet
from rlhfjob_operator import contract, progress
from rlhfjob_operator.contract import shm_prefix
from rlhfjob_operator.local import sweep_shm

log = logging.getLogger("rlhfjob.tests.podrunner")

# images/runtime-cpu.Dockerfile: ENTRYPOINT and ENV of the runtime image.
IMAGE_ENTRYPOINT = ("python", "-m", "rlhfjob.worker")
IMAGE_ENV = {"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
IMAGE_HOME = "/tmp"
_DNS = re.compile(
    r"\b(?P<host>[a-z0-9]([-a-z0-9]*[a-z0-9])?)\.(?P<sub>[a-z0-9]([-a-z0-9]*[a-z0-9])?)"
    r"\.(?P<ns>[a-z0-9]([-a-z0-9]*[a-z0-9])?)\.svc(\.cluster\.local)?\b"
)
_FIELD = re.compile(r"^metadata\.(labels|annotations)\['(?P<key>[^']+)'\]$")
_RETRY_S = 0.5


class Held(Exception):
    """The pod cannot start (yet): the reason and message its containers wait with."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason, self.message = reason, message


class Addresses:
    """Pod IPs: ``127.<b>.x.y``, one per DNS identity, kept for the runner's life."""

    def __init__(self, rng: random.Random) -> None:
        self._second = rng.randrange(64, 250)
        self._next = 1
        self._by_key: dict[tuple[str, ...], str] = {}
        self._lock = threading.Lock()

    def of(self, *key: str) -> str:
        with self._lock:
            ip = self._by_key.get(key)
            if ip is None:
                n = self._next
                self._next += 1
                if n >= 254 * 254:
                    raise RuntimeError("out of pod addresses")
                ip = self._by_key[key] = f"127.{self._second}.{n // 254}.{n % 254 + 1}"
            return ip


@dataclass
class _Pod:
    uid: str
    namespace: str
    name: str
    ip: str
    root: Path
    log_path: Path
    grace: float
    proc: subprocess.Popen[bytes] | None = None
    stopping: threading.Event = field(default_factory=threading.Event)
    reaped: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    thread: threading.Thread | None = None
    shm: str | None = None  # shared-memory prefix of the worker, once known
    exit_code: int | None = None


class PodRunner:
    """Runs pods as local processes (see the module doc); a `PodHandler`.

    ``grace`` bounds SIGTERM-to-SIGKILL on deletion; ``inherit`` names variables
    of this process passed on to every pod (the test session's marker, say).
    """

    def __init__(
        self,
        repo: Path,
        *,
        grace: float = 5.0,
        inherit: tuple[str, ...] = (),
        seed: int | None = None,
    ) -> None:
        self.repo = repo
        self.grace = grace
        self.inherit = inherit
        self.addresses = Addresses(random.Random(seed))
        self.dir = Path(tempfile.mkdtemp(prefix="rlhfjob-pods-"))
        self._pods: dict[str, _Pod] = {}  # by uid
        self._lock = threading.Lock()
        self._closed = False

    # -- PodHandler ----------------------------------------------------------

    def start(self, kubelet: TestKubelet, pod: Any) -> None:
        meta = pod.metadata
        ip = self.addresses.of(*_identity(pod))
        root = self.dir / f"{meta.namespace}.{meta.name}.{meta.uid[:8]}"
        grace = pod.spec.termination_grace_period_seconds
        state = _Pod(
            uid=meta.uid,
            namespace=meta.namespace,
            name=meta.name,
            ip=ip,
            root=root,
            log_path=self.dir / f"{meta.namespace}.{meta.name}.{meta.uid[:8]}.log",
            grace=self.grace if grace is None else min(float(grace), self.grace),
        )
        with self._lock:
            if self._closed:
                return
            self._pods[meta.uid] = state
        state.thread = threading.Thread(
            target=self._run, args=(kubelet, pod, state), name=f"pod-{meta.name}", daemon=True
        )
        state.thread.start()

    def stop(self, kubelet: TestKubelet, pod: Any) -> None:
        with self._lock:
            state = self._pods.get(pod.metadata.uid)
        if state is not None:
            self._stop(state)

    # -- what tests call -----------------------------------------------------

    def log(self, namespace: str, name: str) -> str:
        """The output of the newest pod of that name (kept after it is deleted)."""
        with self._lock:
            paths = [
                p.log_path
                for p in self._pods.values()
                if (p.namespace, p.name) == (namespace, name)
            ]
        return paths[-1].read_text(errors="replace") if paths and paths[-1].exists() else ""

    def pid(self, namespace: str, name: str) -> int | None:
        """The process of that pod while it runs, else None."""
        with self._lock:
            for p in self._pods.values():
                if (p.namespace, p.name) == (namespace, name) and p.proc is not None:
                    with p.lock:
                        if not p.reaped:
                            return p.proc.pid
        return None

    def address(self, namespace: str, name: str) -> str | None:
        with self._lock:
            found = [
                p.ip for p in self._pods.values() if (p.namespace, p.name) == (namespace, name)
            ]
        return found[-1] if found else None

    def running(self, namespace: str | None = None) -> list[str]:
        """Names of pods whose process has not been reaped yet."""
        with self._lock:
            pods = list(self._pods.values())
        out = []
        for p in pods:
            with p.lock:
                live = p.proc is not None and not p.reaped
            if live and namespace in (None, p.namespace):
                out.append(p.name)
        return sorted(out)

    def close(self, timeout: float = 30.0) -> None:
        """Stop every pod still running (SIGTERM, then SIGKILL), reap it, remove all dirs."""
        with self._lock:
            self._closed = True
            pods = list(self._pods.values())
        for p in pods:
            p.stopping.set()
        # In parallel: each may take its grace period.
        stoppers = [threading.Thread(target=self._stop, args=(p,), daemon=True) for p in pods]
        for t in stoppers:
            t.start()
        deadline = time.monotonic() + timeout
        for t in stoppers:
            t.join(timeout=max(0.1, deadline - time.monotonic()))
        for p in pods:
            if p.thread is not None:
                p.thread.join(timeout=max(0.1, deadline - time.monotonic()))
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- one pod -------------------------------------------------------------

    def _run(self, kubelet: TestKubelet, pod: Any, state: _Pod) -> None:
        ref = f"{state.namespace}/{state.name}"
        try:
            argv, env, cwd = self._prepare_until_ready(kubelet, pod, state)
            if argv is None:
                return  # deleted while it waited
            with state.lock:
                if state.stopping.is_set():
                    return
                state.log_path.parent.mkdir(parents=True, exist_ok=True)
                with state.log_path.open("ab") as out:
                    try:
                        state.proc = subprocess.Popen(
                            argv,
                            env=env,
                            cwd=cwd,
                            stdin=subprocess.DEVNULL,
                            stdout=out,
                            stderr=subprocess.STDOUT,
                            start_new_session=True,
                        )
                    except OSError as exc:
                        self._finish(kubelet, state, 128, "StartError", f"{argv[0]}: {exc}")
                        return
            _report(kubelet.mark_running, state.namespace, state.name, pod_ip=state.ip)
            code = self._reap(state)
            state.exit_code = code
            if not state.stopping.is_set():
                reason = "Completed" if code == 0 else "Error"
                self._finish(kubelet, state, code, reason, _termination_message(state))
        except Exception as exc:  # a bug of the harness: say so on the pod and in the log
            log.exception("pod runner: %s", ref)
            kubelet.errors.append(f"pod runner {ref}: {exc!r}")
        finally:
            self._cleanup(state)

    def _prepare_until_ready(
        self, kubelet: TestKubelet, pod: Any, state: _Pod
    ) -> tuple[list[str] | None, dict[str, str], str]:
        """What to run; while a Secret, ConfigMap or claim is missing, hold the pod and retry."""
        reported: str | None = None
        while not state.stopping.is_set():
            try:
                return self._prepare(kubelet, pod, state)
            except Held as held:
                if held.message != reported:
                    reported = held.message
                    _report(
                        kubelet.mark_waiting,
                        state.namespace,
                        state.name,
                        reason=held.reason,
                        message=held.message,
                    )
            state.stopping.wait(_RETRY_S)
        return None, {}, ""

    def _prepare(
        self, kubelet: TestKubelet, pod: Any, state: _Pod
    ) -> tuple[list[str], dict[str, str], str]:
        spec = pod.spec
        if len(spec.containers) != 1 or spec.init_containers:
            raise Held(
                "Unsupported", "the test kubelet runs single-container pods without init containers"
            )
        container = spec.containers[0]
        if container.env_from:
            raise Held("Unsupported", "envFrom is not emulated by the test kubelet")
        mounts = self._mount(kubelet, pod, state)

        def translate(value: str) -> str:
            value = _DNS.sub(lambda m: self.addresses.of(m["ns"], m["sub"], m["host"]), value)
            return _rebase(value, mounts)

        env = {"PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin"}
        env |= {k: os.environ[k] for k in self.inherit if k in os.environ}
        env |= IMAGE_ENV
        env["HOME"] = _rebase(IMAGE_HOME, mounts)
        if "/tmp" in mounts:
            env["TMPDIR"] = mounts["/tmp"]
        env["HOSTNAME"] = spec.hostname or pod.metadata.name
        state.root.mkdir(parents=True, exist_ok=True)
        (state.root / "termination-log").write_bytes(b"")
        env[contract.ENV_TERMINATION_LOG] = str(state.root / "termination-log")
        env |= {
            "RLHFJOB_METRICS_HOST": state.ip,
            "GLOO_SOCKET_IFNAME": "lo",
            "TP_SOCKET_IFNAME": "lo",
        }
        for var in container.env or []:
            value = self._env_value(kubelet, pod, state, var)
            if value is not None:
                env[var.name] = translate(value)
        for name in ("RLHFJOB_JOB_NAME", "MASTER_PORT", "RANK"):
            if name not in env:
                break
        else:
            state.shm = (
                f"{shm_prefix(env['RLHFJOB_JOB_NAME'], int(env['MASTER_PORT']))}{env['RANK']}_"
            )
        command = list(container.command or IMAGE_ENTRYPOINT) + list(container.args or [])
        if any("$(" in part for part in command):
            raise Held("Unsupported", "$(VAR) expansion in command/args is not emulated")
        argv = [translate(part) for part in command]
        if argv and argv[0] in ("python", "python3"):
            argv[0] = sys.executable
        cwd = translate(container.working_dir) if container.working_dir else str(self.repo)
        return argv, env, cwd

    def _env_value(self, kubelet: TestKubelet, pod: Any, state: _Pod, var: Any) -> str | None:
        """The value of one env entry; None for an optional one that is absent."""
        source = var.value_from
        if source is None:
            if var.value is not None and "$(" in var.value:
                raise Held("Unsupported", f"env {var.name}: $(VAR) expansion is not emulated")
            return var.value or ""
        ns = state.namespace
        if source.secret_key_ref is not None or source.config_map_key_ref is not None:
            secret = source.secret_key_ref is not None
            ref = source.secret_key_ref if secret else source.config_map_key_ref
            kind = "secret" if secret else "configmap"
            data = _read_data(kubelet, ns, ref.name, secret=secret)
            if data is None or ref.key not in data:
                if ref.optional:
                    return None
                what = (
                    f"{kind} {ref.name!r} not found"
                    if data is None
                    else f"key {ref.key!r} not in {kind} {ref.name!r}"
                )
                raise Held("CreateContainerConfigError", f"env {var.name}: {what}")
            return data[ref.key]
        if source.field_ref is not None:
            return _field(pod, state, source.field_ref.field_path, var.name)
        raise Held("Unsupported", f"env {var.name}: this valueFrom is not emulated")

    def _mount(self, kubelet: TestKubelet, pod: Any, state: _Pod) -> dict[str, str]:
        """mountPath -> host path for the container's volumeMounts (volumes materialised)."""
        volumes = {v.name: v for v in pod.spec.volumes or []}
        out: dict[str, str] = {}
        for mount in pod.spec.containers[0].volume_mounts or []:
            volume = volumes.get(mount.name)
            if volume is None:
                raise Held(
                    "CreateContainerConfigError", f"volumeMount {mount.name!r} names no volume"
                )
            base = self._volume(kubelet, state, volume)
            path = Path(base) / mount.sub_path if mount.sub_path else Path(base)
            path.mkdir(parents=True, exist_ok=True)
            out[mount.mount_path.rstrip("/") or "/"] = str(path)
        return out

    def _volume(self, kubelet: TestKubelet, state: _Pod, volume: Any) -> str:
        ns = state.namespace
        own = state.root / "volumes" / volume.name
        if volume.empty_dir is not None:
            own.mkdir(parents=True, exist_ok=True)
            return str(own)
        if volume.config_map is not None or volume.secret is not None:
            secret = volume.secret is not None
            source = volume.secret if secret else volume.config_map
            name = source.secret_name if secret else source.name
            data = _read_data(kubelet, ns, name, secret=secret)
            if data is None:
                if source.optional:
                    data = {}
                else:
                    kind = "secret" if secret else "configmap"
                    raise Held(
                        "ContainerCreating", f"volume {volume.name}: {kind} {name!r} not found"
                    )
            items = {i.key: i.path for i in source.items or []} or {k: k for k in data}
            if own.exists():
                shutil.rmtree(own)
            own.mkdir(parents=True)
            for key, rel in items.items():
                if key not in data:
                    raise Held("ContainerCreating", f"volume {volume.name}: no key {key!r}")
                target = own / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(data[key])
            return str(own)
        if volume.persistent_volume_claim is not None:
            claim = volume.persistent_volume_claim.claim_name
            try:
                pvc = kubelet.core.read_namespaced_persistent_volume_claim(claim, ns)
            except ApiException as exc:
                if exc.status == 404:
                    raise Held(
                        "ContainerCreating", f"volume {volume.name}: claim {claim!r} not found"
                    ) from None
                raise
            if pvc.status.phase != "Bound" or not pvc.spec.volume_name:
                raise Held(
                    "ContainerCreating", f"volume {volume.name}: claim {claim!r} is not bound"
                )
            pv = kubelet.core.read_persistent_volume(pvc.spec.volume_name)
            if pv.spec.host_path is None:
                raise Held(
                    "Unsupported", f"volume {volume.name}: PV {pv.metadata.name} is not a hostPath"
                )
            return str(pv.spec.host_path.path)
        if volume.host_path is not None:
            return str(volume.host_path.path)
        raise Held("Unsupported", f"volume {volume.name}: this kind is not emulated")

    # -- processes -----------------------------------------------------------

    def _reap(self, state: _Pod) -> int:
        """Wait for the leader to exit, kill what is left of its group, reap; the exit code.

        The leader stays a zombie until reaped (WNOWAIT), so its group id cannot be
        taken by another process while the group is signalled.
        """
        proc = state.proc
        assert proc is not None
        while True:
            try:
                os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
                break
            except ChildProcessError:
                break  # reaped already (cannot happen: only this thread waits)
            except InterruptedError:
                continue
        with state.lock:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            code = proc.wait()
            state.reaped = True
        return 128 - code if code < 0 else code

    def _stop(self, state: _Pod) -> None:
        """SIGTERM the pod's group, SIGKILL after its grace; returns once it is reaped."""
        state.stopping.set()
        with state.lock:
            proc, reaped = state.proc, state.reaped
            if proc is not None and not reaped:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        if proc is None:
            if state.thread is not None:
                state.thread.join(timeout=state.grace + 10)
            return
        deadline = time.monotonic() + state.grace
        while time.monotonic() < deadline and not self._is_reaped(state):
            time.sleep(0.05)
        with state.lock:
            if not state.reaped:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        if state.thread is not None:
            state.thread.join(timeout=10)

    @staticmethod
    def _is_reaped(state: _Pod) -> bool:
        with state.lock:
            return state.reaped

    def _finish(
        self, kubelet: TestKubelet, state: _Pod, code: int, reason: str, message: str | None
    ) -> None:
        _report(
            kubelet.finish_pod, state.namespace, state.name, code, reason=reason, message=message
        )

    def _cleanup(self, state: _Pod) -> None:
        if state.shm is not None:
            sweep_shm(state.shm)
        shutil.rmtree(state.root, ignore_errors=True)


def _termination_message(state: _Pod) -> str | None:
    try:
        with (state.root / "termination-log").open("rb") as f:
            text = f.read(progress.MAX_BYTES).decode(errors="replace")
    except OSError:
        return None
    return text or None


def _identity(pod: Any) -> tuple[str, ...]:
    """What a pod's address is keyed by: its DNS name when it has one, else its name."""
    spec, meta = pod.spec, pod.metadata
    if spec.hostname and spec.subdomain:
        return (meta.namespace, spec.subdomain, spec.hostname)
    return (meta.namespace, "", meta.name)


def _rebase(value: str, mounts: dict[str, str]) -> str:
    """``value`` with a leading mountPath replaced by its host directory (longest first)."""
    for mount in sorted(mounts, key=len, reverse=True):
        if value == mount or value.startswith(mount.rstrip("/") + "/"):
            return mounts[mount] + value[len(mount) :]
    return value


def _read_data(
    kubelet: TestKubelet, namespace: str, name: str, *, secret: bool
) -> dict[str, str] | None:
    """A Secret's (decoded) or ConfigMap's data; None on 404."""
    try:
        if secret:
            obj = kubelet.core.read_namespaced_secret(name, namespace)
            return {k: base64.b64decode(v).decode() for k, v in (obj.data or {}).items()}
        obj = kubelet.core.read_namespaced_config_map(name, namespace)
        return dict(obj.data or {})
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _field(pod: Any, state: _Pod, path: str, var: str) -> str:
    meta = pod.metadata
    simple = {
        "metadata.name": meta.name,
        "metadata.namespace": meta.namespace,
        "metadata.uid": meta.uid,
        "spec.nodeName": pod.spec.node_name,
        "spec.serviceAccountName": pod.spec.service_account_name,
        "status.podIP": state.ip,
        "status.hostIP": "127.0.0.1",
    }
    if path in simple:
        return str(simple[path] or "")
    m = _FIELD.match(path)
    if m:
        found = (meta.labels if m[1] == "labels" else meta.annotations) or {}
        return str(found.get(m["key"], ""))
    raise Held("Unsupported", f"env {var}: fieldRef {path!r} is not emulated")


def _report(call: Any, *args: Any, **kwargs: Any) -> None:
    """A status update; a pod deleted meanwhile (404) needs none."""
    try:
        call(*args, **kwargs)
    except ApiException as exc:
        if exc.status != 404:
            raise


@contextlib.contextmanager
def running_pods(kubelet: TestKubelet, repo: Path, **kwargs: Any) -> Iterator[PodRunner]:
    """A PodRunner as the kubelet's handler for the block; closed afterwards."""
    runner = PodRunner(repo, **kwargs)
    try:
        with kubelet.using(runner):
            yield runner
    finally:
        runner.close()
