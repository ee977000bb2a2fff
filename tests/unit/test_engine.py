"""The episode loop: accounting, stream positions, sync, eval, hooks and bad input."""

from __future__ import annotations

import pytest
import torch
from toys import Actor, EvalActor, Learner, Scorer, prompts

from rlhfjob import BaseModule, Engine, Environment, Evaluator, SpecError, Trainer


def build(runtime, *, n_prompts=16, models=None, evaluator=False):
    actor, scorer, learner = EvalActor("actor"), Scorer("scorer"), Learner("learner")

    def env_flow(batch):
        return scorer.forward_step(actor.forward_step(batch))

    def trainer_flow(batch):
        learner.train_step(batch)

    def eval_flow(batch):
        return scorer.eval_step(actor.eval_step(batch))

    ev = Evaluator(eval_flow).set_dataset(prompts(6)) if evaluator else None
    config = {"runtime": {"num_episode": 1, **runtime}, "models": models or {}}
    engine = (
        Engine(Environment(env_flow), Trainer(trainer_flow), ev, config=config)
        .set_parameter_sync(learner, actor)
        .set_dataset(prompts(n_prompts))
    )
    return engine, actor, scorer, learner


def test_train_accounting_16_samples_micro_4_global_8_two_epochs():
    engine, _, _, learner = build(
        dict(
            sample_per_episode=16,
            generation_batch_size=4,
            train_micro_batch_size=4,
            train_global_batch_size=8,
            num_training_epoch=2,
        )
    )
    summaries = engine.learn(progress=False)
    assert summaries[0]["train_steps"] == 4
    assert [it for it, _ in learner.calls] == [0, 1, 2, 3]
    for _, micro_batches in learner.calls:
        assert [len(mb) for mb in micro_batches] == [4, 4]
    for epoch in (learner.calls[:2], learner.calls[2:]):
        ids = sorted(i for _, mbs in epoch for mb in mbs for i in mb)
        assert ids == list(range(16)), "every sample exactly once per epoch"


def test_shuffle_changes_order_between_epochs_and_off_keeps_it():
    runtime = dict(
        sample_per_episode=16,
        generation_batch_size=4,
        train_micro_batch_size=4,
        train_global_batch_size=8,
        num_training_epoch=2,
    )
    engine, _, _, learner = build(runtime)
    engine.learn(progress=False)
    orders = [[i for _, mbs in learner.calls[k : k + 2] for mb in mbs for i in mb] for k in (0, 2)]
    assert orders[0] != orders[1]

    engine, _, _, learner = build({**runtime, "data_shuffle": False})
    engine.learn(progress=False)
    flat = [i for _, mbs in learner.calls for mb in mbs for i in mb]
    assert flat == list(range(16)) * 2


def test_prompt_stream_continues_across_episodes_and_wraps():
    engine, actor, _, _ = build(
        dict(
            num_episode=3,
            sample_per_episode=4,
            generation_batch_size=2,
            train_micro_batch_size=2,
            data_shuffle=False,
        ),
        n_prompts=6,
    )
    engine.learn(progress=False)
    seen = [i for _, ids in actor.calls for i in ids]
    assert seen == [0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5]
    assert [it for it, _ in actor.calls] == list(range(6)), "iteration counts every call"


def test_shuffled_stream_visits_every_prompt_once_per_pass():
    engine, actor, _, _ = build(
        dict(
            num_episode=3, sample_per_episode=4, generation_batch_size=4, train_micro_batch_size=4
        ),
        n_prompts=12,
    )
    engine.learn(progress=False)
    seen = [i for _, ids in actor.calls for i in ids]
    assert sorted(seen) == list(range(12))
    assert seen != list(range(12))


def test_parameter_sync_honours_sync_frequency():
    engine, actor, _, learner = build(
        dict(
            num_episode=3, sample_per_episode=4, generation_batch_size=4, train_micro_batch_size=4
        ),
        models={"learner": {"trainable": True, "sync_frequency": 2}},
    )
    snapshots = []
    original_after = actor.after_episode

    def record():
        snapshots.append(
            (actor.model.weight.detach().clone(), learner.model.weight.detach().clone())
        )
        original_after()

    actor.after_episode = record
    engine.learn(progress=False)
    (a1, l1), (a2, l2), (a3, l3) = snapshots
    assert not torch.equal(a1, l1), "episode 1: not synced (frequency 2)"
    assert torch.equal(a2, l2), "episode 2: synced"
    assert not torch.equal(a3, l3)
    assert torch.equal(a3, a2)


def test_initial_sync_starts_inference_from_trainer_weights():
    engine, actor, _, learner = build(
        dict(sample_per_episode=4, generation_batch_size=4, train_micro_batch_size=4)
    )
    seen = []
    original = actor.before_episode
    actor.before_episode = lambda: (
        seen.append(torch.equal(actor.model.weight, learner.model.weight)),
        original(),
    )
    engine.learn(progress=False)
    assert seen == [True]


def test_evaluation_metrics_and_summary():
    engine, *_ = build(
        dict(
            num_episode=2,
            sample_per_episode=8,
            generation_batch_size=4,
            train_micro_batch_size=4,
            eval_episode_interval=1,
        ),
        evaluator=True,
    )
    summaries = engine.learn(progress=False)
    assert [s["episode"] for s in summaries] == [1, 2]
    for s in summaries:
        assert "eval/reward" in s and "scorer/reward_mean" in s
        assert s["samples"] == 8 and s["samples_per_s"] > 0


def test_learning_improves_reward():
    engine, *_ = build(
        dict(
            num_episode=15,
            sample_per_episode=16,
            generation_batch_size=8,
            train_micro_batch_size=8,
            train_global_batch_size=16,
            num_training_epoch=2,
        ),
    )
    summaries = engine.learn(progress=False)
    assert summaries[-1]["scorer/reward_mean"] > summaries[0]["scorer/reward_mean"] + 0.5


def test_progress_prints_one_line_per_episode(capsys):
    engine, *_ = build(
        dict(num_episode=2, sample_per_episode=4, generation_batch_size=4, train_micro_batch_size=4)
    )
    engine.learn()
    out = capsys.readouterr()
    lines = [line for line in out.out.splitlines() if line.startswith("episode ")]
    assert len(lines) == 2 and "samples/s" in lines[0] and "scorer/reward_mean" in lines[0]
    assert "episodes" in out.err  # the progress bar


def test_fan_in_merges_inputs_in_argument_order():
    class Emit(BaseModule):
        def __init__(self, name, value):
            super().__init__(name)
            self.value = value

        def forward_step(self, data, iteration):
            return {
                "id": data["id"],
                "k": torch.full((len(data["id"]),), self.value),
                self.name: data["id"] * 0 + self.value,
            }

    class Join(BaseModule):
        def setup(self):
            self.seen = []

        def forward_step(self, data):  # no iteration parameter: called without it
            self.seen.append(list(data))
            self.seen.append(data["k"].tolist())
            return data

    x, y, z, join = Emit("x", 1), Emit("y", 2), Emit("z", 3), Join("join")

    def flow(batch):
        return join.forward_step(
            z.forward_step(batch), x.forward_step(batch), y.forward_step(batch)
        )

    engine = Engine(
        Environment(flow),
        config={"runtime": {"num_episode": 1, "sample_per_episode": 2, "generation_batch_size": 2}},
    )
    engine.set_dataset(prompts(2)).learn(progress=False)
    assert join.seen[0] == ["id", "k", "z", "x", "y"]
    assert join.seen[1] == [2, 2], "the last input wins on a shared key"


def test_hooks_are_called_in_episode_order():
    events = []

    class Hooked(Actor):
        def before_episode(self):
            events.append("before")

        def after_episode(self):
            events.append("after")

    hooked = Hooked("hooked")

    def flow(batch):
        return hooked.forward_step(batch)

    Engine(
        Environment(flow),
        config={"runtime": {"num_episode": 2, "sample_per_episode": 2, "generation_batch_size": 2}},
    ).set_dataset(prompts(2)).learn(progress=False)
    assert events == ["before", "after", "before", "after"]


def test_evaluator_alone_and_post_process_override():
    actor = EvalActor("actor")

    class MaxEval(Evaluator):
        def post_process(self, results, eval_info):
            return {"max_y": max(float(r["y"].max()) for r in results["actor"])}

    engine = Engine(
        evaluator=MaxEval(lambda b: actor.eval_step(b)).set_dataset(prompts(5)),
        config={
            "runtime": {
                "num_episode": 1,
                "sample_per_episode": 2,
                "generation_batch_size": 2,
                "eval_episode_interval": 1,
            }
        },
    )
    summary = engine.learn(progress=False)
    assert set(summary[0]) >= {"eval/max_y"}


def test_custom_engine_subclass():
    class CustomEngine(Engine):
        def __init__(self, config):
            self.actor = Actor("actor")
            super().__init__(Environment(self.env), config=config)

        def env(self, batch):
            return self.actor.forward_step(batch)

    engine = CustomEngine(
        {"runtime": {"num_episode": 1, "sample_per_episode": 2, "generation_batch_size": 2}}
    )
    assert engine.set_dataset(prompts(2)).learn(progress=False)[0]["samples"] == 2


def test_replay_manager_sees_last_episodes():
    seen = []

    def manager(buffers):
        seen.append([b.episode_id for b in buffers])
        return buffers[-1].buffer

    engine, *_ = build(
        dict(
            num_episode=3,
            sample_per_episode=4,
            generation_batch_size=4,
            train_micro_batch_size=4,
            max_replay_episode=2,
        )
    )
    engine.set_replay_sample_manager(manager).learn(progress=False)
    assert seen == [[0], [0, 1], [1, 2]]  # ChatLearn's 0-based episode ids


def test_fixed_loader_refuses_a_wrong_sample_count_and_dynamic_accepts_it():
    runtime = dict(
        sample_per_episode=8,
        generation_batch_size=4,
        train_micro_batch_size=2,
        train_global_batch_size=4,
        max_replay_episode=1,
    )
    engine, _, _, learner = build(runtime)
    engine.set_replay_sample_manager(lambda buffers: buffers[-1].buffer[:6])
    with pytest.raises(ValueError, match="produced 6 samples .* 'fixed'"):
        engine.learn(progress=False)

    engine, _, _, learner = build({**runtime, "stream_data_loader_type": "dynamic"})
    engine.set_replay_sample_manager(lambda buffers: buffers[-1].buffer[:6])
    engine.learn(progress=False)
    assert [[len(mb) for mb in mbs] for _, mbs in learner.calls] == [[2, 2], [2]]


def test_bad_engine_inputs_are_refused_with_the_fix():
    actor, other = Actor("same"), Actor("same")
    with pytest.raises(ValueError, match="two different modules are named 'same'"):
        Engine(Environment(lambda b: other.forward_step(actor.forward_step(b))))

    engine, *_ = build(
        dict(sample_per_episode=4, generation_batch_size=4, train_micro_batch_size=4),
        models={"actr": {}},
    )
    with pytest.raises(ValueError, match=r"config models \['actr'\] name no module"):
        engine.learn(progress=False)

    a = Actor("a")
    with pytest.raises(ValueError, match="call engine.set_dataset"):
        Engine(Environment(lambda b: a.forward_step(b))).learn(progress=False)

    with pytest.raises(ValueError, match="returns nothing"):

        def env(b):
            a.forward_step(b)

        Engine(Environment(env), Trainer(lambda b: Learner("l").train_step(b)))

    with pytest.raises(ValueError, match="no environment, trainer or evaluator"):
        Engine().learn()

    with pytest.raises(SpecError, match="runtime.sample_per_eposide: unknown key"):
        Engine(config={"runtime": {"sample_per_eposide": 3}})


def test_save_interval_without_path_names_the_key():
    with pytest.raises(SpecError, match="runtime.data_checkpoint_path"):
        build(
            dict(
                sample_per_episode=4,
                generation_batch_size=4,
                train_micro_batch_size=4,
                save_episode_interval=1,
            )
        )
