"""Saving a run's state into a checkpoint, and resuming a run from the latest one.

What a checkpoint holds beside each module's state_dict: the episodes done, each
flow node's iteration counter, the prompt stream's position, the StreamDataset
(replay buffers included), every summary so far and the RNG states, so a
resumed run equals an uninterrupted one. With ``max_staleness``, also the env
flows already run ahead of training (their samples materialised, their weight
versions) and the prompt ledger, so a resumed run neither generates them again
nor skips their prompts (``rlhfjob.ahead``).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from rlhfjob import checkpoint as ckpt
from rlhfjob.ahead import Generation

if TYPE_CHECKING:
    from rlhfjob.episodes import EpisodeRun

__all__ = ["resume", "save"]


def save(run: EpisodeRun, summary: dict[str, Any]) -> None:
    """Checkpoint ``run`` after its episode ``run.episode``, whose ``summary`` is not yet
    in ``run.summaries``."""
    path = run.rt.data_checkpoint_path
    assert path is not None, "RuntimeSpec requires a path when saving is on"
    engine_state = {
        "episode": run.episode,
        "iterations": dict(run.iterations),
        "stream": run.stream.state_dict() if run.stream else None,
        "dataset": run.dataset.state_dict(),
        "summaries": [*run.summaries, summary],
        "rng": ckpt.capture_rng(),
        "version": run.version,
        "ahead": [generation.saved() for generation in run.ahead.values()],
        "ledger": run.ledger,
    }
    ckpt.save_checkpoint(
        path,
        episode=run.episode,
        modules=run.ex.state_dicts(),
        engine=engine_state,
        ledger=[run.ledger[e] for e in sorted(run.ledger)],
    )


def resume(run: EpisodeRun) -> bool:
    """Restore ``run`` from the latest complete checkpoint; False (nothing changed) when
    ``enable_resume_training`` is off or there is none. Raises ValueError when the
    checkpoint's modules are not this engine's."""
    if not run.rt.enable_resume_training:
        return False
    latest = ckpt.latest_checkpoint(run.rt.data_checkpoint_path)
    if latest is None:
        return False
    modules, state = ckpt.load_checkpoint(latest)
    names = {m.name for m in run.engine.modules}
    if set(modules) != names:
        raise ValueError(
            f"checkpoint {str(latest)!r} holds modules {sorted(modules)} but this engine has "
            f"{sorted(names)}; point runtime.data_checkpoint_path at a new directory or set "
            "runtime.enable_resume_training to false"
        )
    run.ex.load_state_dicts(modules)
    run.episode = state["episode"]
    run.iterations = dict(state["iterations"])
    if run.stream is not None and state["stream"] is not None:
        run.stream.load_state_dict(state["stream"])
    run.dataset.load_state_dict(state["dataset"])
    run.summaries = list(state["summaries"])
    # Checkpoints from before generation ahead: no env flow in flight, no ledger.
    run.version = state.get("version", run.episode)
    run.ahead = {g["episode"]: Generation.restored(g) for g in state.get("ahead", [])}
    run.ledger = {int(e): dict(entry) for e, entry in state.get("ledger", {}).items()}
    ckpt.restore_rng(state["rng"])
    print(f"resumed from {latest} (episode {run.episode})", file=sys.stderr)
    return True
