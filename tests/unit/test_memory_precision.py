"""Memory and precision of the trainers (issue 12, item 7): micro-batches by a token budget,
gradient checkpointing, bf16 autocast with float32 weights, bf16 inference-only models.

Each claim is checked against the plain path: the budget's gradient against the fixed
count's, the checkpointed gradient against the stored one, the bf16 reference's log-probs
against the float32 one's. Models are the small GPT and tiny Hugging Face models made
here from configs (nothing downloaded).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from textmodels import tiny_lm
from torch import nn

from rlhfjob.algorithms.common import enable_gradient_checkpointing, sequence
from rlhfjob.algorithms.configs import PolicyTrainerConfig
from rlhfjob.algorithms.micro_batches import pack_by_tokens, sample_tokens, token_cut
from rlhfjob.algorithms.ppo import PolicyReference, PolicyTrainer, ValueTrainer
from rlhfjob.data import collate, split_samples
from rlhfjob.models import response_log_probs
from rlhfjob_operator.spec import JobConfig

VOCAB, P, R = 20, 6, 5
GPT = {"gpt": {"vocab_size": VOCAB, "n_layer": 2, "n_head": 2, "n_embd": 16, "block_size": 32}}
MODES = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]


def _hf(kind: str, path: Path) -> dict[str, Any]:
    """A tiny ``kind`` model saved at ``path``, as model args."""
    pytest.importorskip("transformers")
    tiny_lm(kind, vocab=VOCAB, positions=16).save_pretrained(path)
    return {"model_path": str(path)}


def _model_args(kind: str, tmp_path: Path) -> dict[str, Any]:
    return GPT if kind == "gpt" else _hf(kind, tmp_path / kind)


def _bound(cls: type, args: dict[str, Any]) -> Any:
    module = cls("m")
    module.bind(JobConfig.model_validate({"models": {"m": {"trainable": True, "args": args}}}))
    module.setup()
    return module


def _samples(n: int, *, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """``n`` samples of left-padded prompts and right-padded responses of varying lengths."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        p_len, r_len = 1 + (3 * i) % P, 1 + (2 * i) % R
        prompt_mask = (torch.arange(P) >= P - p_len).long()  # (P,)
        response_mask = (torch.arange(R) < r_len).long()  # (R,)
        out.append(
            {
                "prompt_ids": torch.randint(1, VOCAB, (P,), generator=g) * prompt_mask,
                "prompt_mask": prompt_mask,
                "response_ids": torch.randint(1, VOCAB, (R,), generator=g) * response_mask,
                "response_mask": response_mask,
                "advantages": torch.randn(R, generator=g) * response_mask,
                "ref_logprobs": -torch.rand(R, generator=g) * 3,
                "values": torch.randn(R, generator=g) * 0.1,
                "returns": torch.randn(R, generator=g),
                "group_id": torch.tensor(i),
            }
        )
    return out


def _with_old_logprobs(model: nn.Module, samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The samples with ``old_logprobs`` near the model's own (ratios within 5%: no clip)."""
    batch = collate(samples)
    ids, mask, r = sequence(batch)
    with torch.no_grad():
        logprobs = response_log_probs(model, ids, mask, r)[0]  # (B, R)
    noise = torch.empty_like(logprobs).uniform_(-0.05, 0.05, generator=torch.Generator())
    return split_samples({**batch, "old_logprobs": logprobs + noise})


def _fixed_cut(samples: list[Any], size: int) -> list[dict[str, Any]]:
    return [collate(samples[i : i + size]) for i in range(0, len(samples), size)]


def _step_grads(trainer: Any, data: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """The gradients ``train_step`` hands to its optimizer (before the step)."""
    grads: dict[str, torch.Tensor] = {}

    def record(*_: Any) -> None:
        for name, p in trainer.model.named_parameters():
            grads[name] = p.grad.detach().clone()

    handle = trainer.optimizer.register_step_pre_hook(record)
    trainer.train_step(data)
    handle.remove()
    return grads


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> None:
    assert a.keys() == b.keys() and a
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=1e-4, atol=atol), name
    assert any(float(g.abs().max()) > 0 for g in a.values()), "a zero gradient proves nothing"


# --- the packing itself ---------------------------------------------------------------


def test_pack_by_tokens_is_greedy_in_order_and_a_long_sample_trains_alone() -> None:
    assert pack_by_tokens([3, 4, 2, 5, 1], 7) == [range(0, 2), range(2, 4), range(4, 5)]
    assert pack_by_tokens([3, 4, 2, 5, 1], 8) == [range(0, 2), range(2, 5)]
    assert pack_by_tokens([2, 9, 2], 5) == [range(0, 1), range(1, 2), range(2, 3)]
    assert pack_by_tokens([9], 5) == [range(0, 1)]
    assert pack_by_tokens([5, 5], 10) == [range(0, 2)]  # the budget itself fits
    assert pack_by_tokens([], 5) == []


def test_token_cut_keeps_the_order_and_trims_padding_columns() -> None:
    samples = _samples(8)
    tokens = [int(n) for n in sample_tokens(collate(samples))]
    assert tokens == [int(s["prompt_mask"].sum() + s["response_mask"].sum()) for s in samples]
    cut = token_cut(_fixed_cut(samples, 3), budget=12)
    assert [int(mb["group_id"].numel()) for mb in cut] != [3, 3, 2]  # a different cut
    assert torch.equal(torch.cat([mb["group_id"] for mb in cut]), torch.arange(8))
    for mb in cut:
        assert int(sample_tokens(mb).sum()) <= 12 or len(mb["group_id"]) == 1
        # Trimmed: the first prompt column and the last response column are used.
        assert bool(mb["prompt_mask"][:, 0].any()) and bool(mb["response_mask"][:, -1].any())
        r = mb["response_mask"].shape[1]
        for key in ("response_ids", "advantages", "ref_logprobs", "values", "returns"):
            assert mb[key].shape == (len(mb["group_id"]), r), key
        assert mb["prompt_ids"].shape == mb["prompt_mask"].shape
    assert {mb["response_mask"].shape[1] for mb in cut} != {R}, "some micro-batch is shorter"
    # Nothing lost: every real token is still there, in order.
    whole = collate(samples)
    kept = [mb["response_ids"][mb["response_mask"].bool()] for mb in cut]
    assert torch.equal(torch.cat(kept), whole["response_ids"][whole["response_mask"].bool()])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["gpt", "llama"])
def test_the_token_budget_gives_the_fixed_cuts_gradient(
    kind: str, mode: str, tmp_path: Path
) -> None:
    args = {**_model_args(kind, tmp_path), "loss_agg_mode": mode, "max_grad_norm": 1e9}
    args["kl_coef"] = 0.1  # the KL term aggregates by the same scale
    fixed = _bound(PolicyTrainer, args)
    budgeted = _bound(PolicyTrainer, {**args, "train_max_tokens_per_micro_batch": 10})
    samples = _with_old_logprobs(fixed.model, _samples(10))
    data = _fixed_cut(samples, 2)
    want = _step_grads(fixed, data)
    got = _step_grads(budgeted, data)
    cuts = budgeted.get_and_clear_metrics()["micro_batches"]
    assert cuts != len(data), "the budget cut the batch differently"
    _assert_same(got, want, atol=1e-6)
    whole = _step_grads(_bound(PolicyTrainer, args), [collate(samples)])  # one micro-batch
    _assert_same(got, whole, atol=1e-6)


def test_the_value_trainer_takes_the_token_budget_too(tmp_path: Path) -> None:
    args = {**GPT, "loss_agg_mode": "seq-mean-token-sum-norm", "max_grad_norm": 1e9}
    data = _fixed_cut(_samples(10), 5)
    want = _step_grads(_bound(ValueTrainer, args), data)
    budgeted = _bound(ValueTrainer, {**args, "train_max_tokens_per_micro_batch": 7})
    got = _step_grads(budgeted, data)
    assert budgeted.get_and_clear_metrics()["micro_batches"] > len(data)
    _assert_same(got, want, atol=1e-6)


# --- gradient checkpointing -------------------------------------------------------------


def _first_block_calls(model: nn.Module) -> list[int]:
    """A counter of the first transformer block's attention calls (checkpointing replays
    them in the backward pass)."""
    inner = model.model if hasattr(model, "model") else model
    block = next(m for m in inner.modules() if isinstance(m, nn.ModuleList))[0]
    attention = next(m for n, m in block.named_children() if "attn" in n)
    calls = [0]
    attention.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("kind", ["gpt", "llama", "gpt2"])
def test_gradient_checkpointing_gives_the_same_gradients(kind: str, tmp_path: Path) -> None:
    args = {**_model_args(kind, tmp_path), "max_grad_norm": 1e9, "kl_coef": 0.1}
    if kind == "gpt":  # dropout on: the replay must draw the same masks
        args["gpt"] = {**args["gpt"], "dropout": 0.1}
    plain = _bound(PolicyTrainer, args)
    checkpointed = _bound(PolicyTrainer, {**args, "gradient_checkpointing": True})
    samples = _with_old_logprobs(plain.model, _samples(6))
    data = _fixed_cut(samples, 3)
    calls = _first_block_calls(plain.model), _first_block_calls(checkpointed.model)
    torch.manual_seed(3)
    want = _step_grads(plain, data)
    torch.manual_seed(3)
    got = _step_grads(checkpointed, data)
    assert calls[0][0] == 2 and calls[1][0] == 4, "each micro-batch's block ran again"
    _assert_same(got, want, atol=1e-7)


def test_gradient_checkpointing_of_a_value_model_and_a_refusal() -> None:
    args = {**GPT, "max_grad_norm": 1e9}
    data = _fixed_cut(_samples(4), 2)
    want = _step_grads(_bound(ValueTrainer, args), data)
    got = _step_grads(_bound(ValueTrainer, {**args, "gradient_checkpointing": True}), data)
    _assert_same(got, want, atol=1e-7)
    with pytest.raises(ValueError, match=r"models\.critic\.args\.gradient_checkpointing: Linear"):
        enable_gradient_checkpointing(nn.Linear(2, 2), name="critic")


# --- precision --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gpt", "llama"])
def test_bf16_autocast_keeps_float32_weights_and_lowers_the_loss(kind: str, tmp_path: Path) -> None:
    args = {**_model_args(kind, tmp_path), "mixed_precision": "bf16", "lr": 1e-2}
    trainer = _bound(PolicyTrainer, args)
    data = _fixed_cut(_with_old_logprobs(trainer.model, _samples(6)), 3)
    seen: list[torch.dtype] = []
    head = trainer.model.lm_head if kind == "gpt" else trainer.model.model.lm_head
    head.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    losses = []
    for _ in range(4):
        trainer.train_step(data)
        losses.append(trainer.get_and_clear_metrics()["policy_loss"])
    assert set(seen) == {torch.bfloat16}, "the forward ran under bf16 autocast"
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    state = trainer.optimizer.state_dict()["state"]
    assert state and all(v["exp_avg"].dtype == torch.float32 for v in state.values())
    assert losses[-1] < losses[0] - 1e-3, losses
    # And the precision is really lower: the float32 trainer's first loss differs.
    plain = _bound(PolicyTrainer, {**args, "mixed_precision": "no"})
    plain.train_step(data)
    assert plain.get_and_clear_metrics()["policy_loss"] != losses[0]


def test_a_bf16_reference_scores_in_bfloat16_weights_and_float32_log_probs() -> None:
    base = {**GPT, "init_seed": 5}
    fp32, bf16 = (
        _bound(PolicyReference, base),
        _bound(PolicyReference, {**base, "dtype": "bfloat16"}),
    )
    assert all(p.dtype == torch.bfloat16 for p in bf16.model.parameters())
    batch = collate(_samples(4))
    want, got = fp32.forward_step(batch)["ref_logprobs"], bf16.forward_step(batch)["ref_logprobs"]
    assert got.dtype == torch.float32
    assert torch.allclose(got, want, atol=0.05) and not torch.equal(got, want)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"dtype": "bfloat16"}, "models.m.args.dtype is 'bfloat16', but a trainer keeps float32"),
        ({"mixed_precision": "fp16"}, "models.m.args.mixed_precision"),
        ({"train_max_tokens_per_micro_batch": 0}, "models.m.args.train_max_tokens_per_micro_batch"),
        ({"gradient_checkpointing": "sometimes"}, "models.m.args.gradient_checkpointing"),
    ],
)
def test_bad_memory_settings_are_refused_naming_the_key(args: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        PolicyTrainerConfig.from_args("m", {**GPT, **args})


# --- end to end -------------------------------------------------------------------------


def test_a_grpo_job_with_a_token_budget_bf16_and_checkpointing(tmp_path: Path) -> None:
    """Two GRPO episodes in process on a tiny Llama by path: the trainer cuts by tokens,
    in bf16 autocast, checkpointed; the reference infers in bfloat16 weights."""
    pytest.importorskip("transformers")
    from textmodels import save_text_model

    from rlhfjob import Engine, Environment, Trainer
    from rlhfjob.algorithms.grpo import GroupPolicyInference, GRPOTrainer, group_advantages
    from rlhfjob.algorithms.ppo import RewardInference
    from rlhfjob.text import load_tokenizer

    model_path = save_text_model(tmp_path / "tiny-llama")
    eos = load_tokenizer(model_path).eos_token_id
    policy, reference = GroupPolicyInference("policy"), PolicyReference("reference")
    trainer = GRPOTrainer("grpo_policy")

    def reward_fn(data: dict[str, Any]) -> torch.Tensor:
        ids, mask = data["response_ids"], data["response_mask"].bool()  # (B, R) each
        return ((ids % 2 == 0) & mask).float().sum(1) / mask.sum(1)  # (B,): even ids' share

    reward = RewardInference("reward", reward_fn=reward_fn)

    def env_flow(batch: dict[str, Any]) -> dict[str, Any]:
        out = policy.forward_step(batch)
        return reward.forward_step(out, reference.forward_step(out))

    def trainer_flow(batch: list[dict[str, Any]]) -> None:
        trainer.train_step(batch)

    model = {"model_path": str(model_path)}
    budget = {"train_max_tokens_per_micro_batch": 40, "mixed_precision": "bf16"}
    config = {
        "runtime": {
            "num_episode": 2,
            "sample_per_episode": 4,
            "generation_batch_size": 4,
            "stream_data_loader_type": "dynamic",
            "max_replay_episode": 1,
            "train_micro_batch_size": 4,
            "train_global_batch_size": 4,
        },
        "models": {
            "policy": {
                "args": {**model, "max_new_tokens": 6, "eos_token_id": eos, "group_size": 2}
            },
            "reference": {"args": {**model, "dtype": "bfloat16"}},
            "reward": {"args": {"kl_coef": 0.0}},
            "grpo_policy": {
                "trainable": True,
                "args": {**model, **budget, "gradient_checkpointing": True, "lr": 1e-2},
            },
        },
    }
    prompts = [{"prompt": f"What is {a} plus {a}?"} for a in ("one", "two", "three", "four")]
    engine = Engine(Environment(env_flow), Trainer(trainer_flow), config=config)
    engine.set_parameter_sync(trainer, policy).set_replay_sample_manager(group_advantages)
    engine.set_dataset(prompts)
    summaries = engine.learn(progress=False)
    assert [s["samples"] for s in summaries] == [8, 8]
    cuts = [s["grpo_policy/micro_batches"] for s in summaries]
    assert all(1 < c < 4 for c in cuts), f"4 samples of about 20 tokens in budgets of 40: {cuts}"
    assert all(s["grpo_policy/policy_loss"] != 0 for s in summaries), "the rewards differ"
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    start = reference.named_parameters_to_sync()
    trained = trainer.named_parameters_to_sync()
    assert any(not torch.allclose(trained[k].to(start[k].dtype), start[k]) for k in start)
