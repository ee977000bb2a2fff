"""What the trainers' memory settings save: activations kept for the backward pass.

One ``PolicyTrainer.train_step`` on a small Llama (made from a config, nothing
downloaded) over a global batch of 16 samples whose prompts (4-32 tokens, left-padded
to 32) and responses (4-64 tokens, right-padded to 64) vary in length, as a text job's
do. For each setting: the most bytes of activations saved for backward by one
micro-batch's forward (counted with ``torch.autograd.graph.saved_tensors_hooks``, each
storage once, parameters excluded: a deterministic figure, unlike the process's RSS),
and the step's median wall time of 3 on this CPU. Baseline first; prints one
``RESULT`` JSON line (``make bench`` makes it a table)::

    .venv/bin/python bench/memory_bench.py
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from rlhfjob.algorithms.ppo import PolicyTrainer
from rlhfjob.data import collate
from rlhfjob_operator.spec import JobConfig

VOCAB, P, R, N, MICRO = 320, 32, 64, 16, 4


def _save_model(path: Path) -> None:
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=P + R,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(path)


def _samples() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(N):
        p_len = int(torch.randint(4, P + 1, (), generator=g))
        r_len = int(torch.randint(4, R + 1, (), generator=g))
        prompt_mask = (torch.arange(P) >= P - p_len).long()
        response_mask = (torch.arange(R) < r_len).long()
        out.append(
            {
                "prompt_ids": torch.randint(1, VOCAB, (P,), generator=g) * prompt_mask,
                "prompt_mask": prompt_mask,
                "response_ids": torch.randint(1, VOCAB, (R,), generator=g) * response_mask,
                "response_mask": response_mask,
                "advantages": torch.randn(R, generator=g) * response_mask,
                "old_logprobs": torch.full((R,), -5.8),
            }
        )
    return out


class SavedBytes:
    """The most activation bytes one forward of ``model`` saved for backward."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.seen: set[int] = set()
        self.current = self.peak = 0
        model.register_forward_pre_hook(lambda *_: self._reset())
        model.register_forward_hook(lambda *_: self._record())

    def _reset(self) -> None:
        self.seen, self.current = set(), 0

    def _record(self) -> None:
        self.peak = max(self.peak, self.current)

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in self.params and ptr not in self.seen:
            self.seen.add(ptr)
            self.current += storage.nbytes()
        return t


def _measure(model_path: Path, extra: dict[str, Any]) -> tuple[float, float]:
    args = {"model_path": str(model_path), "max_grad_norm": 1e9, **extra}
    trainer = PolicyTrainer("m")
    trainer.bind(JobConfig.model_validate({"models": {"m": {"trainable": True, "args": args}}}))
    trainer.setup()
    samples = _samples()
    data = [collate(samples[i : i + MICRO]) for i in range(0, N, MICRO)]
    counter = SavedBytes(trainer.model)
    seconds = []
    for _ in range(3):
        start = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t):
            trainer.train_step(data)
        seconds.append(time.perf_counter() - start)
    return counter.peak / 2**20, statistics.median(seconds)


def main() -> int:
    torch.set_num_threads(1)
    real = sum(int(s["prompt_mask"].sum() + s["response_mask"].sum()) for s in _samples())
    budget = real // (N // MICRO)  # about as many micro-batches as the fixed cut's
    settings: list[tuple[str, dict[str, Any]]] = [
        (f"fixed cut of {MICRO} (baseline)", {}),
        ("gradient_checkpointing", {"gradient_checkpointing": True}),
        ("mixed_precision: bf16", {"mixed_precision": "bf16"}),
        (
            f"train_max_tokens_per_micro_batch: {budget}",
            {"train_max_tokens_per_micro_batch": budget},
        ),
        (
            "all three",
            {
                "gradient_checkpointing": True,
                "mixed_precision": "bf16",
                "train_max_tokens_per_micro_batch": budget,
            },
        ),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        model_path = Path(tmp) / "llama"
        _save_model(model_path)
        rows = [(name, *_measure(model_path, extra)) for name, extra in settings]
    what = f"Llama 4x128, {N} samples ({real} real tokens of {N * (P + R)} padded)"
    settings_out = [{"setting": name, "mib": mb, "step_s": s} for name, mb, s in rows]
    print("RESULT " + json.dumps({"what": what, "settings": settings_out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
