"""Checkpoint and resume: bitwise-identical results, and saves that survive a kill."""

from __future__ import annotations

import copy
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from toys import Actor, Learner, Scorer, prompts

from rlhfjob import Engine, Environment, Trainer
from rlhfjob import checkpoint as ckpt
from rlhfjob.checkpoint import RNGStream
from rlhfjob_operator.restarts import latest_saved_episode

RUNTIME = dict(
    sample_per_episode=8,
    generation_batch_size=4,
    train_micro_batch_size=2,
    train_global_batch_size=4,
    num_training_epoch=2,
    max_replay_episode=2,
    data_shuffle=True,
)


def run(num_episode: int, path: Path | None, *, interval: int | None = 1):
    actor, scorer, learner = Actor("actor"), Scorer("scorer"), Learner("learner")

    def env_flow(batch):
        return scorer.forward_step(actor.forward_step(batch))

    def trainer_flow(batch):
        learner.train_step(batch)

    runtime = {**RUNTIME, "num_episode": num_episode}
    if path is not None:
        runtime.update(data_checkpoint_path=str(path), save_episode_interval=interval)
    engine = (
        Engine(Environment(env_flow), Trainer(trainer_flow), config={"runtime": runtime})
        .set_parameter_sync(learner, actor)
        .set_dataset(prompts(11))  # not a multiple of the episode: the stream wraps mid-episode
        .set_replay_sample_manager(lambda buffers: buffers[-1].buffer)
    )
    summaries = engine.learn(progress=False)
    state = {k: v.clone() for k, v in learner.model.state_dict().items()}
    state.update({f"actor.{k}": v.clone() for k, v in actor.model.state_dict().items()})
    return summaries, state, learner


def assert_bitwise(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_resume_is_bitwise_identical_to_an_uninterrupted_run(tmp_path):
    straight_summaries, straight, _ = run(4, None)
    run(2, tmp_path)
    assert ckpt.latest_checkpoint(tmp_path).name == "episode_000002"
    summaries, resumed, learner = run(4, tmp_path)
    assert_bitwise(straight, resumed)
    assert len(learner.calls) == 2 * 2 * 2, "only episodes 3 and 4 trained after resume"
    assert [s["episode"] for s in summaries] == [1, 2, 3, 4]
    for a, b in zip(straight_summaries, summaries, strict=True):
        assert a["scorer/reward_mean"] == b["scorer/reward_mean"]


def test_resume_can_be_turned_off(tmp_path):
    run(2, tmp_path)
    actor, learner = Actor("actor"), Learner("learner")
    engine = Engine(
        Environment(lambda b: actor.forward_step(b)),
        Trainer(lambda b: learner.train_step(b)),
        config={
            "runtime": {
                **RUNTIME,
                "num_episode": 1,
                "enable_resume_training": False,
                "data_checkpoint_path": str(tmp_path),
            }
        },
    ).set_dataset(prompts(8))
    assert [s["episode"] for s in engine.learn(progress=False)] == [1]


def test_resume_with_other_modules_names_the_fix(tmp_path):
    run(1, tmp_path)
    actor = Actor("renamed")
    engine = Engine(
        Environment(lambda b: actor.forward_step(b)),
        config={"runtime": {**RUNTIME, "num_episode": 2, "data_checkpoint_path": str(tmp_path)}},
    ).set_dataset(prompts(8))
    with pytest.raises(ValueError, match="enable_resume_training"):
        engine.learn(progress=False)


def test_incomplete_and_damaged_checkpoints(tmp_path):
    assert ckpt.latest_checkpoint(tmp_path / "missing") is None
    good = ckpt.save_checkpoint(
        tmp_path, episode=1, modules={"m": {"w": torch.ones(2)}}, engine={"episode": 1}
    )
    half = tmp_path / "episode_000002"
    (half / "modules").mkdir(parents=True)
    assert ckpt.latest_checkpoint(tmp_path) == good, "no COMPLETE marker: ignored"
    # What a launcher reads without torch to say where a restart resumes: the same one.
    assert latest_saved_episode(tmp_path) == 1
    with pytest.raises(ValueError, match="incomplete"):
        ckpt.load_checkpoint(half)
    (good / "engine.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot be read"):
        ckpt.load_checkpoint(good)


_KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from rlhfjob import checkpoint
    import test_checkpoint as t

    kill_at, partial = int(sys.argv[1]), sys.argv[2] == "partial"
    calls = {"n": 0}
    original = checkpoint._write_atomic
    replace = os.replace

    def write(path, payload):
        if "episode_000003" in str(path) or ".tmp-episode_000003" in str(path):
            if calls["n"] == kill_at:
                if partial:  # a torn write: half the bytes land in the temp file
                    with open(path.with_name("." + path.name + ".tmp-x"), "wb") as f:
                        f.write(payload[: len(payload) // 2])
                os.kill(os.getpid(), signal.SIGKILL)
            calls["n"] += 1
        return original(path, payload)

    def rename(src, dst):
        if str(dst).endswith("episode_000003") and kill_at == 99:
            os.kill(os.getpid(), signal.SIGKILL)
        return replace(src, dst)

    checkpoint._write_atomic = write
    checkpoint.os.replace = rename
    t.run(4, __import__("pathlib").Path(sys.argv[3]))
    """
)


@pytest.mark.parametrize(
    ("kill_at", "mode"),
    [(0, "clean"), (1, "partial"), (2, "clean"), (3, "partial"), (4, "clean"), (99, "clean")],
)
def test_kill_during_save_keeps_the_previous_checkpoint(tmp_path, tmp_path_factory, kill_at, mode):
    tests = str(Path(__file__).parent)
    proc = subprocess.run(
        # `python -c` puts its working directory (tests/unit) first on sys.path, so
        # `import test_checkpoint` finds this file; toys comes from PYTHONPATH.
        [sys.executable, "-c", _KILLER, str(kill_at), mode, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tests,
        # torch makes a temp dir at import that only a clean exit removes: the killed
        # process gets a TMPDIR that pytest removes.
        env=os.environ | {"TMPDIR": str(tmp_path_factory.mktemp("killed-tmp"))},
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    latest = ckpt.latest_checkpoint(tmp_path)
    assert latest is not None and latest.name == "episode_000002"
    ckpt.load_checkpoint(latest)
    # The run resumes from episode 2 and ends exactly where an uninterrupted one does.
    _, resumed, _ = run(4, tmp_path)
    _, straight, _ = run(4, None)
    assert_bitwise(straight, resumed)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == [], "the next save swept the killed save's temp files"
    assert os.listdir(tmp_path)


def _draws(stream: RNGStream) -> tuple[float, float, float]:
    with stream:
        return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_resident_streams_draw_what_swapped_streams_draw(monkeypatch):
    """A model worker's streams stay loaded between calls (RNGStream.keep_resident): two
    streams alternating, a checkpoint read and a load mid-way give the same numbers as
    the swapping default."""

    def run() -> tuple[list[tuple[float, float, float]], dict]:
        a, b = RNGStream(1), RNGStream(2)
        out = [_draws(a), _draws(a), _draws(b), _draws(a)]
        saved = copy.deepcopy(a.state)  # read while a is (or may be) resident
        out += [_draws(b), _draws(a)]
        a.state = saved  # a load: the next draws repeat
        out += [_draws(a), _draws(b)]
        return out, b.state

    swapped, b_swapped = run()
    monkeypatch.setattr(RNGStream, "_resident_mode", True)
    monkeypatch.setattr(RNGStream, "_resident", None)
    resident, b_resident = run()
    assert resident == swapped
    assert swapped[6] == swapped[5]  # the load rewound a
    assert b_resident["python"] == b_swapped["python"]
    assert torch.equal(b_resident["torch"], b_swapped["torch"])
