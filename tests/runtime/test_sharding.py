"""FSDP2 trainer replicas (``args.fsdp``, ``rlhfjob.sharding``) in two real gloo processes:
a sharded PolicyTrainer or ValueTrainer steps as the executor's data-parallel one does,
however unequal its replicas' micro-batch counts; its checkpoint state is whole and loads
back, from a sharded or an unsharded trainer; a replica with nothing to train fails both."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from spawned import spawned_exit_codes

from rlhfjob import sharding
from rlhfjob.algorithms.common import sequence
from rlhfjob.algorithms.ppo import PolicyTrainer, ValueTrainer
from rlhfjob.comm.broadcast import broadcast_tensors
from rlhfjob.executor.operations import GradientAverager
from rlhfjob.models import response_log_probs
from rlhfjob_operator.spec import JobConfig

VOCAB, P, R = 20, 5, 4
GPT = {"vocab_size": VOCAB, "n_layer": 2, "n_head": 2, "n_embd": 16, "block_size": 16}


def _trainer(group: Any, *, fsdp: bool, replica: int, cls: type = PolicyTrainer) -> Any:
    args = {"gpt": GPT, "lr": 1e-2, "max_grad_norm": 0.05, "fsdp": fsdp}
    config = JobConfig.model_validate({"models": {"t": {"trainable": True, "args": args}}})
    trainer = cls("t")
    trainer.bind(config, replica_id=replica, replica_group=group)
    trainer.run_hook(trainer.setup)  # replica 1's own draws: the start must come from 0
    if not fsdp:  # as the executor's setup does for an unsharded data-parallel trainer
        params = list(trainer.model.parameters())
        broadcast_tensors(params, src=0, group=group, bucket_bytes=1 << 20)
        averager = GradientAverager(trainer.model, group, bucket_bytes=1 << 20)
        averager.attach(trainer.optimizer)
        trainer.gradient_averager = averager
    return trainer


def _micro_batches(rank: int, step: int, *, policy: torch.nn.Module | None) -> list[dict[str, Any]]:
    """Rank 0: two micro-batches of 3 samples; rank 1: one. Responses of varying length;
    for a ``policy``, old log-probs its own, so the ratios start at 1."""
    g = torch.Generator().manual_seed(10 * step + rank)
    batches = []
    for _ in range(2 if rank == 0 else 1):
        response_mask = (torch.arange(R) < torch.randint(1, R + 1, (3, 1), generator=g)).long()
        mb = {
            "prompt_ids": torch.randint(1, VOCAB, (3, P), generator=g),
            "response_ids": torch.randint(1, VOCAB, (3, R), generator=g) * response_mask,
            "response_mask": response_mask,
            "advantages": torch.randn(3, R, generator=g) * response_mask,
            "values": torch.randn(3, R, generator=g) * 0.1,
            "returns": torch.randn(3, R, generator=g),
        }
        if policy is not None:
            ids, mask, r = sequence(mb)
            with torch.no_grad():
                mb["old_logprobs"] = response_log_probs(policy, ids, mask, r)[0]
        batches.append(mb)
    return batches


def _rank(rank: int, world: int, port: int) -> None:
    """One process; a failed check fails its exit code (and prints the traceback)."""
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    group = dist.new_group([0, 1], backend="gloo")
    for cls in (ValueTrainer, PolicyTrainer):
        sharded = _trainer(group, fsdp=True, replica=rank, cls=cls)
        plain = _trainer(group, fsdp=False, replica=rank, cls=cls)
        assert sharding.is_sharded(sharded.model) and not sharding.is_sharded(plain.model)
        local = sum(p.to_local().numel() for p in sharded.model.parameters())
        assert local < sum(p.numel() for p in plain.model.parameters())
        for step in range(2):
            data = _micro_batches(rank, step, policy=plain.model if cls is PolicyTrainer else None)
            plain.train_step(data)
            sharded.train_step(data)  # rank 1 runs one extra pass, its loss times 0
        whole = sharded.state_dict()  # collective: both ranks
        want = plain.state_dict()
        for key, value in want["model"].items():
            assert torch.allclose(whole["model"][key], value, atol=1e-6), (cls, key)
        for index, state in want["optimizer"]["state"].items():
            for key, value in state.items():
                assert torch.allclose(whole["optimizer"]["state"][index][key], value, atol=1e-6)
    # Whole states load into sharded trainers, from a sharded one's or an unsharded one's.
    for source in (whole, want):
        fresh = _trainer(group, fsdp=True, replica=rank)
        fresh.load_state_dict(source)
        back = fresh.state_dict()
        for key, value in source["model"].items():
            assert torch.equal(back["model"][key], value), key
        for index, state in source["optimizer"]["state"].items():
            for key, value in state.items():
                assert torch.equal(back["optimizer"]["state"][index][key], value), key
    # A replica with no sample: both replicas fail, naming what to change.
    try:
        sharded.train_step(_micro_batches(rank, 9, policy=plain.model) if rank == 0 else [])
    except ValueError as exc:
        assert "every replica of a sharded trainer" in str(exc), exc
    else:
        raise AssertionError("a replica with no data must fail the step")
    dist.destroy_process_group()


def test_sharded_replicas_step_as_data_parallel_ones_and_save_whole_state() -> None:
    assert spawned_exit_codes(_rank, 2, timeout=180) == [0, 0]
