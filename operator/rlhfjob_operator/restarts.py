"""Pure: where a restarted gang starts again, in the words both launchers print.

A gang restart resumes from the newest complete checkpoint under the job's
checkpoint directory (``rlhfjob.checkpoint`` writes it; its layout is defined
here so that a launcher can read it without torch)::

    episode_000004/      the checkpoint after 4 episodes
        ...
        COMPLETE         written last: a directory without it is ignored

``rlhfjob run`` sees that directory and says exactly where the next start
resumes. The operator does not: the checkpoints live on the pods' volume. It
says what its spec makes certain (an emptyDir dies with the pods; no
``save_episode_interval`` saves nothing; resume switched off) and otherwise
names the claim the resumed run reads, with the checkpoint the status last
reported when something reported one: it never guesses an episode.
"""

from __future__ import annotations

import re
from pathlib import Path

from rlhfjob_operator.spec import RLHFJob, RuntimeSpec

__all__ = [
    "CHECKPOINT_DIR",
    "COMPLETE",
    "latest_saved_episode",
    "restart_origin",
    "restart_origin_on_kubernetes",
]

# A checkpoint's directory name (the episodes it holds, zero-padded) and its last file.
CHECKPOINT_DIR = re.compile(r"^episode_(\d{6,})$")
COMPLETE = "COMPLETE"
_LOST = (
    "from the beginning: its checkpoints were on an emptyDir, gone with its pods "
    "(set spec.checkpoint.persistentVolumeClaim)"
)


def latest_saved_episode(root: str | Path | None) -> int | None:
    """The episodes done in the newest complete checkpoint under ``root``; None when
    ``root`` is None or empty, is no directory, or holds no complete checkpoint."""
    if not root or not Path(root).is_dir():
        return None
    episodes = [
        int(match.group(1))
        for entry in Path(root).iterdir()
        if (match := CHECKPOINT_DIR.match(entry.name)) and (entry / COMPLETE).is_file()
    ]
    return max(episodes, default=None)


def restart_origin(
    runtime: RuntimeSpec,
    *,
    saved: int | None,
    claim: str | None = None,
    reported: str | None = None,
    lost: bool = False,
) -> str:
    """Where the next start of the gang begins, as the words after "restarting the gang".

    ``saved``: the episodes in the newest complete checkpoint the launcher sees
    (:func:`latest_saved_episode`); None when it sees none. A launcher that cannot
    look passes None and says why: ``lost`` (the checkpoints were on storage that
    went with the pods) or ``claim`` (they are on that volume, unseen; ``reported``
    is the checkpoint the job's status last named, if any).

    ``enable_resume_training: false`` starts from the beginning whatever was saved;
    a checkpoint after the last episode resumes with nothing left to train. A job
    whose entrypoint passes the Engine a config of its own may save elsewhere than
    the spec says: the launcher can only speak for the spec's directory.
    """
    interval = runtime.save_episode_interval
    if not runtime.enable_resume_training:
        return "from the beginning: runtime.enable_resume_training is false"
    if saved is not None:
        if saved >= runtime.num_episode:
            return f"from its checkpoint of episode {saved}: all {runtime.num_episode} were done"
        return f"from episode {saved + 1}"
    if not interval:
        return "from the beginning: no checkpoint (set runtime.save_episode_interval)"
    if lost:
        return _LOST
    if claim is not None:
        if reported:
            return f"from its last checkpoint ({reported}, on claim {claim})"
        every = "every episode" if interval == 1 else f"every {interval} episodes"
        return f"from its last checkpoint on claim {claim}, if one was saved ({every})"
    every = "each episode" if interval == 1 else f"every {interval} episodes"
    return f"from the beginning: no checkpoint yet (one is saved after {every})"


def restart_origin_on_kubernetes(
    job: RLHFJob, *, last_checkpoint: str | None, stopping: bool = False
) -> str:
    """:func:`restart_origin` for a gang of pods: its checkpoint volume decides what is
    certain (an emptyDir is lost, a claim is unseen); ``last_checkpoint`` is the job's
    ``status.lastCheckpoint`` (None when nothing reported one).

    ``stopping``: the gang was disrupted and is stopping, its driver saving an emergency
    checkpoint on the way (``rlhfjob.comm.stopping``; a pod always has a checkpoint
    directory, the mount), whatever ``save_episode_interval`` says; one that cannot
    reach the end of its episode in time leaves the last one standing. On an emptyDir
    that checkpoint goes with the pods, so the words name the volume to set, not the
    interval (which would not help).
    """
    pvc = job.spec.checkpoint.persistent_volume_claim
    if stopping and job.spec.runtime.enable_resume_training:
        if pvc is None:
            return _LOST
        return (
            f"from the checkpoint it saves as it stops (on claim {pvc.claim_name}; "
            "else its last one)"
        )
    return restart_origin(
        job.spec.runtime,
        saved=None,
        claim=None if pvc is None else pvc.claim_name,
        reported=last_checkpoint,
        lost=pvc is None,
    )
