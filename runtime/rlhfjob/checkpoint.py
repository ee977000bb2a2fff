"""Checkpoints that survive a kill at any point.

Layout under ``runtime.data_checkpoint_path``::

    episode_000004/
        modules/<name>.pt     each module's state_dict (model, optimizer, extras)
        engine.pt             episode, data position, replay buffers, RNG states
        ledger.json           the prompt ledger (rlhfjob.ahead), for ``rlhfjob ledger``
        COMPLETE              written last: a checkpoint without it is ignored

Every file is written to a temporary name, fsynced, then renamed, and
``COMPLETE`` goes last; a kill at any point leaves the previous complete
checkpoint as the latest. Incomplete directories are swept by the next save.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlhfjob_operator.ledger import LEDGER
from rlhfjob_operator.restarts import CHECKPOINT_DIR, COMPLETE

__all__ = [
    "RNGStream",
    "capture_rng",
    "latest_checkpoint",
    "load_checkpoint",
    "restore_rng",
    "save_checkpoint",
]

# The layout's names live with the launchers, which read it without torch.
_NAME, _MARKER = CHECKPOINT_DIR, COMPLETE


def _write_atomic(path: Path, payload: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _torch_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def save_checkpoint(
    root: str | Path,
    *,
    episode: int,
    modules: dict[str, dict[str, Any]],
    engine: dict[str, Any],
    ledger: list[dict[str, Any]] | None = None,
) -> Path:
    """Write checkpoint ``episode`` under ``root``; returns its directory.

    ``modules`` maps module name to its state_dict; ``ledger`` (JSON) is also written
    as ``ledger.json``, readable without torch. An existing complete
    checkpoint of the same episode is replaced only once the new one is
    complete.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"episode_{episode:06d}"
    work = root / f".tmp-episode_{episode:06d}-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    (work / "modules").mkdir(parents=True)
    for name, state in modules.items():
        _write_atomic(work / "modules" / f"{name}.pt", _torch_bytes(state))
    _write_atomic(work / "engine.pt", _torch_bytes(engine))
    if ledger is not None:
        _write_atomic(work / LEDGER, json.dumps(ledger, indent=1).encode())
    _write_atomic(
        work / _MARKER,
        json.dumps({"episode": episode, "modules": sorted(modules)}).encode(),
    )
    _fsync_dir(work)
    if final.exists():
        stale = root / f".stale-episode_{episode:06d}-{os.getpid()}"
        os.replace(final, stale)
        os.replace(work, final)
        shutil.rmtree(stale, ignore_errors=True)
    else:
        os.replace(work, final)
    _fsync_dir(root)
    _sweep(root, keep=final)
    return final


def _sweep(root: Path, *, keep: Path) -> None:
    """Remove leftovers of saves that were killed (never a complete checkpoint)."""
    for entry in root.iterdir():
        if entry != keep and entry.name.startswith((".tmp-", ".stale-")):
            shutil.rmtree(entry, ignore_errors=True)


def latest_checkpoint(root: str | Path | None) -> Path | None:
    """The newest complete checkpoint under ``root``; None when there is none."""
    if root is None:
        return None
    root = Path(root)
    if not root.is_dir():
        return None
    complete = [
        entry for entry in root.iterdir() if _NAME.match(entry.name) and (entry / _MARKER).is_file()
    ]
    return max(complete, key=lambda p: int(_NAME.match(p.name).group(1)), default=None)  # type: ignore[union-attr]


def load_checkpoint(path: str | Path) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """(module states by name, engine state) of a complete checkpoint.

    Raises ValueError naming the directory when it is incomplete or damaged.
    """
    path = Path(path)
    marker = path / _MARKER
    if not marker.is_file():
        raise ValueError(f"checkpoint {str(path)!r} is incomplete (no {_MARKER} file)")
    try:
        names = json.loads(marker.read_text())["modules"]
        modules = {
            name: torch.load(path / "modules" / f"{name}.pt", weights_only=False) for name in names
        }
        engine = torch.load(path / "engine.pt", weights_only=False)
    except Exception as exc:  # torch.load raises many types for one cause: a bad file
        raise ValueError(f"checkpoint {str(path)!r} cannot be read: {exc}") from exc
    return modules, engine


def capture_rng() -> dict[str, Any]:
    """Python, numpy and torch (CPU and every CUDA device) RNG states."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class RNGStream:
    """A private python/numpy/torch RNG stream, swapped in around a module's code.

    Each module draws from its own stream seeded by (job seed, module name,
    replica), so what it samples does not depend on which other modules share
    its process: an in-process run and a distributed one draw the same numbers.

    By default ``with stream:`` swaps the stream in and the caller's state back
    out, so code between module calls (the in-process engine's shuffles) keeps
    its own stream. A model worker calls :meth:`keep_resident` once: nothing but
    module hooks draws random numbers there, so a stream stays loaded in the
    globals after its block and is only swapped out when another stream of the
    process enters. A worker of one module then never swaps at all (numpy's
    get_state/set_state cost about 90 us each, four per call). ``state`` reads
    and writes the live globals while its stream is resident.
    """

    _resident_mode = False
    _resident: RNGStream | None = None

    @classmethod
    def keep_resident(cls) -> None:
        """Leave streams loaded between blocks, for the rest of this process."""
        cls._resident_mode = True

    def __init__(self, seed: int) -> None:
        outer = capture_rng()
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        self._state = capture_rng()
        restore_rng(outer)

    @property
    def state(self) -> dict[str, Any]:
        """This stream's RNG states (what a checkpoint keeps)."""
        return capture_rng() if RNGStream._resident is self else self._state

    @state.setter
    def state(self, value: dict[str, Any]) -> None:
        self._state = value
        if RNGStream._resident is self:
            restore_rng(value)

    def __enter__(self) -> RNGStream:
        if not RNGStream._resident_mode:
            self._outer = capture_rng()
            restore_rng(self._state)
            return self
        resident = RNGStream._resident
        if resident is not self:
            if resident is not None:
                resident._state = capture_rng()
            restore_rng(self._state)
            RNGStream._resident = self
        return self

    def __exit__(self, *exc: object) -> None:
        if not RNGStream._resident_mode:
            self._state = capture_rng()
            restore_rng(self._outer)
