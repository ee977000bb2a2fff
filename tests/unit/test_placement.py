"""The RPC executor's placement: replicas, process groups, sync routes and backend."""

from __future__ import annotations

import pytest

from rlhfjob.comm.env import Peer
from rlhfjob.executor.placement import (
    GroupSpec,
    SyncRoute,
    plan,
    replicas_by_model,
    replicas_of,
)
from rlhfjob_operator.spec import JobConfig

RUNTIME = {"sample_per_episode": 8, "generation_batch_size": 2}


def peer(rank: int, *models: str, replica: int = 0, cuda: bool = False) -> Peer:
    return Peer(
        rank=rank,
        name=f"w{rank}",
        role="driver" if rank == 0 else models[0],
        replica=replica,
        models=models,
        pid=100 + rank,
        host="h",
        cuda=cuda,
    )


def config(**models: dict) -> JobConfig:
    return JobConfig.model_validate({"runtime": RUNTIME, "models": models})


DRIVER = peer(0, "driver")


def test_replicas_leave_out_the_driver_and_follow_rank_then_replica():
    peers = [peer(3, "policy", replica=1), DRIVER, peer(1, "policy"), peer(2, "reward")]
    replicas = replicas_by_model(peers)
    assert {m: [p.rank for p in ps] for m, ps in replicas.items()} == {
        "policy": [1, 3],
        "reward": [2],
    }
    assert "driver" not in replicas


def test_a_model_without_a_worker_is_refused_naming_what_to_add():
    with pytest.raises(ValueError, match=r"model 'critic' has no worker: add models.critic"):
        replicas_of(replicas_by_model([DRIVER, peer(1, "policy")]), "critic")
    with pytest.raises(ValueError, match="model 'critic' has no worker"):
        plan(config(), [DRIVER, peer(1, "policy")], modules=["policy", "critic"])


def test_a_worker_for_a_model_no_flow_uses_is_refused():
    peers = [DRIVER, peer(1, "policy"), peer(2, "spare")]
    with pytest.raises(ValueError, match=r"starts workers for models \['spare'\], which no flow"):
        plan(config(), peers, modules=["policy"])


def test_only_trainable_models_with_several_replicas_get_a_data_parallel_group():
    peers = [
        DRIVER,
        peer(1, "policy"),
        peer(2, "policy", replica=1),
        peer(3, "ref"),
        peer(4, "ref", replica=1),
        peer(5, "value"),
    ]
    models = {"policy": {"trainable": True}, "ref": {}, "value": {"trainable": True}}
    layout = plan(config(**models), peers, modules=["policy", "ref", "value"])
    assert layout.groups == [GroupSpec("dp/policy", [1, 2], "gloo")]
    assert layout.replicated == {"w1": {"policy": "dp/policy"}, "w2": {"policy": "dp/policy"}}
    assert layout.sync == {}
    assert [p.rank for p in layout.replicas["ref"]] == [3, 4]


def test_a_sync_pair_inside_the_same_processes_copies_in_place():
    peers = [DRIVER, peer(1, "trainer", "actor")]
    layout = plan(
        config(trainer={"trainable": True}),
        peers,
        modules=["actor", "trainer"],
        sync_pairs=[("trainer", "actor")],
    )
    assert layout.sync == {("trainer", "actor"): None}
    assert layout.groups == []


def test_a_sync_pair_across_processes_broadcasts_from_the_first_trainer_replica():
    trainers = [peer(1, "trainer"), peer(2, "trainer", replica=1)]
    actors = [peer(4, "actor"), peer(3, "actor", replica=1)]
    layout = plan(
        config(trainer={"trainable": True}),
        [DRIVER, *actors, *trainers],
        modules=["actor", "trainer"],
        sync_pairs=[("trainer", "actor")],
    )
    route = layout.sync[("trainer", "actor")]
    assert route == SyncRoute("sync/trainer/actor", trainers[0], [actors[1], actors[0]])
    # Data-parallel groups first, in the modules' order, then sync groups: every rank
    # makes them in this one order.
    assert layout.groups == [
        GroupSpec("dp/trainer", [1, 2], "gloo"),
        GroupSpec("sync/trainer/actor", [1, 3, 4], "gloo"),
    ]


def test_nccl_only_when_every_worker_has_cuda():
    gpu = [peer(1, "policy", cuda=True), peer(2, "policy", replica=1, cuda=True)]
    models = config(policy={"trainable": True})
    assert plan(models, [DRIVER, *gpu], modules=["policy"]).backend == "nccl"
    mixed = [gpu[0], peer(2, "policy", replica=1)]
    layout = plan(models, [DRIVER, *mixed], modules=["policy"])
    assert layout.backend == "gloo"
    assert layout.groups == [GroupSpec("dp/policy", [1, 2], "gloo")]
