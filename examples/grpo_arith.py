"""GRPO teaches a small Llama to add two numbers, in text: prompts from a JSONL file, a
tokenizer of its own, and a reward that reads the answer out of the generated text.

    python examples/grpo_arith.py --plot arith_reward.png

Before training, ``prepare`` makes what a user would bring, in ``--workdir`` (by
default a temporary directory, removed at the end), unless the job config already names
every path (see ``PATH_KEYS``: then it runs on those as they are):

- a byte-level BPE tokenizer trained with ``tokenizers`` on the task's text, with an
  end-of-sequence token;
- a small Llama (``LlamaForCausalLM`` from a config) given a short supervised warm-up
  on right answers, as RLHF starts from an SFT model, and saved with the tokenizer:
  ``model_path`` loads both, as it would load a Hugging Face checkpoint;
- ``train.jsonl`` and ``eval.jsonl``: rows ``{"prompt": "17+25=", "answer": "42"}``.

The job (``grpo_arith.yaml``) answers each prompt ``group_size`` times, scores each
response with ``rlhfjob.rewards.arith:exact_answer`` (1.0 when the last number of the
text equals the row's ``answer``), and trains on group-normalised advantages with the
clipped surrogate and a KL term to the reference. Responses end at EOS, so they vary in
length (``reward/response_length``).

The same job from its manifest alone (``grpo_arith_engine.yaml``, ``entrypoint: {engine:
grpo}``, every path written out) needs the files first::

    python examples/grpo_arith.py --prepare-only --workdir grpo-arith
    rlhfjob run examples/grpo_arith_engine.yaml
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from rlhfjob import Engine
from rlhfjob.algorithms import GRPOEngine

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import run_example

CONFIG = Path(__file__).with_suffix(".yaml")
REWARD_KEY = "reward/reward_mean"
EOS, PAD = "<|end|>", "<|pad|>"
MAX_OPERAND = 9  # operands 0..9: sums 0..18, answers of one or two digits


def rows(count: int, *, seed: int) -> list[dict[str, str]]:
    """``count`` addition problems drawn with ``seed``: the prompt and its answer."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        a, b = rng.randint(0, MAX_OPERAND), rng.randint(0, MAX_OPERAND)
        out.append({"prompt": f"{a}+{b}=", "answer": str(a + b)})
    return out


def make_tokenizer() -> Any:
    """A byte-level BPE trained on the task's text, EOS and PAD its special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=[PAD, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    text = [f"{r['prompt']}{r['answer']}" for r in rows(2000, seed=123)]
    bpe.train_from_iterator(text, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS, pad_token=PAD)


def warm_up(model: Any, tokenizer: Any, *, steps: int, seed: int) -> list[float]:
    """``steps`` steps of next-token loss on right answers (the answer and EOS only)."""
    gen = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    model.train()
    for _ in range(steps):
        batch = rows(64, seed=gen.randrange(2**31))
        prompts = [tokenizer(r["prompt"])["input_ids"] for r in batch]
        answers = [tokenizer(r["answer"])["input_ids"] + [tokenizer.eos_token_id] for r in batch]
        width = max(len(p) + len(a) for p, a in zip(prompts, answers, strict=True))
        ids = torch.full((len(batch), width), tokenizer.pad_token_id)
        labels = torch.full((len(batch), width), -100)
        for i, (p, a) in enumerate(zip(prompts, answers, strict=True)):
            ids[i, : len(p) + len(a)] = torch.tensor(p + a)
            labels[i, len(p) : len(p) + len(a)] = torch.tensor(a)
        logits = model(input_ids=ids).logits[:, :-1]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return losses


def prepare(
    workdir: Path, *, warmup_steps: int, seed: int = 0, max_positions: int = 32
) -> dict[str, Path]:
    """The saved model and tokenizer (``model``) and the prompt files, in ``workdir``;
    ``max_positions`` bounds prompt + response (``bench/trl_bench.py`` asks for more)."""
    import transformers

    workdir.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tokenizer()
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=max_positions,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = transformers.LlamaForCausalLM(config)
    warm_up(model, tokenizer, steps=warmup_steps, seed=seed)
    paths = {
        "model": workdir / "model",
        "train": workdir / "train.jsonl",
        "eval": workdir / "eval.jsonl",
    }
    model.save_pretrained(paths["model"])
    tokenizer.save_pretrained(paths["model"])
    for name, count, data_seed in (("train", 4096, seed + 1), ("eval", 128, seed + 2)):
        text = "".join(json.dumps(r) + "\n" for r in rows(count, seed=data_seed))
        paths[name].write_text(text)
    return paths


def build_engine(config: dict[str, Any], **_: Any) -> Engine:
    """The ready-made GRPO engine over the config: its modules load ``model_path``, the
    prompts come from ``runtime.data_path`` and ``eval_data_path``."""
    return GRPOEngine(config=config)


# (section, model or None, key) of what with_paths fills in from the prepared files.
PATH_KEYS = (
    ("runtime", None, "data_path"),
    ("runtime", None, "eval_data_path"),
    ("models", "policy", "model_path"),
    ("models", "reference", "model_path"),
    ("models", "grpo_policy", "model_path"),
    ("models", "policy", "eos_token_id"),
    ("models", "reward", "tokenizer_path"),
)


def _slot(config: dict[str, Any], section: str, model: str | None) -> dict[str, Any]:
    found = config.get(section) or {}
    return found if model is None else (found.get(model) or {}).get("args") or {}


def missing_paths(config: dict[str, Any]) -> list[str]:
    """The ``PATH_KEYS`` the config leaves out, dotted (``models.policy.args.model_path``)."""
    return [
        f"{section}.{key}" if model is None else f"{section}.{model}.args.{key}"
        for section, model, key in PATH_KEYS
        if _slot(config, section, model).get(key) is None
    ]


def with_paths(config: dict[str, Any], paths: dict[str, Path], eos: int) -> dict[str, Any]:
    """The config with the prepared files' paths and the tokenizer's EOS filled in."""
    runtime = config["runtime"]
    runtime.setdefault("data_path", str(paths["train"]))
    runtime.setdefault("eval_data_path", str(paths["eval"]))
    for name in ("policy", "reference", "grpo_policy"):
        config["models"][name]["args"].setdefault("model_path", str(paths["model"]))
    config["models"]["policy"]["args"].setdefault("eos_token_id", eos)
    config["models"]["reward"]["args"].setdefault("tokenizer_path", str(paths["model"]))
    return config


def prepare_only(workdir: Path, *, warmup_steps: int) -> dict[str, Path]:
    """``prepare`` into ``workdir`` and print what a manifest names: the paths and EOS."""
    from rlhfjob.text import load_tokenizer

    paths = prepare(workdir, warmup_steps=warmup_steps)
    eos = load_tokenizer(str(paths["model"])).eos_token_id
    print(f"prepared in {workdir}:")
    print(f"  runtime.data_path: {paths['train']}")
    print(f"  runtime.eval_data_path: {paths['eval']}")
    print(f"  models.{{policy,reference,grpo_policy}}.args.model_path: {paths['model']}")
    print(f"  models.reward.args.tokenizer_path: {paths['model']}")
    print(f"  models.policy.args.eos_token_id: {eos}")
    return paths


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Prepare the model and prompts (unless the config names them all, or with
    ``--prepare-only`` nothing else), run the job; returns the per-episode summaries."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--workdir", help="where prepare() writes (kept); default: a temp dir")
    parser.add_argument("--warmup-steps", type=int, default=100, help="supervised steps")
    parser.add_argument(
        "--prepare-only",
        action="store_true",
        help="write the model, tokenizer and prompts to --workdir and exit (for "
        "grpo_arith_engine.yaml)",
    )
    known, rest = parser.parse_known_args(argv)
    if known.prepare_only:
        if not known.workdir:
            parser.error("--prepare-only needs --workdir DIR: where to keep what it makes")
        prepare_only(Path(known.workdir), warmup_steps=known.warmup_steps)
        return []
    with tempfile.TemporaryDirectory(prefix="grpo-arith-") as scratch:
        workdir = Path(known.workdir) if known.workdir else Path(scratch)

        def prepared(config: dict[str, Any], **kw: Any) -> Engine:
            if not missing_paths(config):  # a manifest naming every file: run on those
                return build_engine(config, **kw)
            from rlhfjob.text import load_tokenizer

            paths = prepare(workdir, warmup_steps=known.warmup_steps)
            eos = load_tokenizer(str(paths["model"])).eos_token_id
            return build_engine(with_paths(config, paths, eos), **kw)

        return run_example(
            rest,
            doc=__doc__,
            config=CONFIG,
            build_engine=prepared,
            reward_key=REWARD_KEY,
            title="GRPO: add two numbers, in text",
        )


if __name__ == "__main__":
    main()
