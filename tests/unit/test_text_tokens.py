"""Text prompts become token ids through the tokenizer saved beside ``model_path``: a real
byte-level BPE with a chat template, made and saved by the test (``textmodels``), read
back by path as a user's would be; chat prompts rendered with the generation prompt,
left-padded with a mask, truncated on the left or refused naming the row."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from textmodels import save_text_model

from rlhfjob.algorithms.grpo import GroupPolicyInference
from rlhfjob.algorithms.ppo import PolicyInference
from rlhfjob.data import collate
from rlhfjob.text import encode_prompts, load_tokenizer, read_prompt_file
from rlhfjob_operator.spec import JobConfig

CHAT = [
    {"role": "system", "content": "Answer with a number."},
    {"role": "user", "content": "What is two plus three?"},
]
RENDERED = "<|system|>\nAnswer with a number.\n<|user|>\nWhat is two plus three?\n<|assistant|>\n"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_text_model(tmp_path_factory.mktemp("text") / "tiny-llama")


def bound(args: dict[str, Any]) -> PolicyInference:
    module = PolicyInference("policy")
    module.bind(JobConfig.model_validate({"models": {"policy": {"args": args}}}))
    return module


def policy(model_dir: Path, **args: Any) -> PolicyInference:
    return bound({"model_path": str(model_dir), "max_new_tokens": 4, **args})


def test_the_tokenizer_comes_from_model_path(model_dir: Path) -> None:
    tokenizer = load_tokenizer(model_dir)
    assert tokenizer.chat_template and tokenizer.eos_token == "<|end|>"
    assert tokenizer.decode(tokenizer("Sort 3 1 2.")["input_ids"]) == "Sort 3 1 2."


def test_a_chat_prompt_is_rendered_with_the_generation_prompt(model_dir: Path) -> None:
    samples = policy(model_dir).build_dataset([{"prompt": CHAT, "answer": "5"}])
    tokenizer = load_tokenizer(model_dir)
    (sample,) = samples
    assert sample["prompt_text"] == RENDERED  # ends with the assistant's turn opened
    assert sample["prompt_ids"].tolist() == tokenizer(RENDERED)["input_ids"]
    assert sample["prompt_mask"].tolist() == [1] * len(sample["prompt_ids"])
    assert sample["prompt"] == CHAT and sample["answer"] == "5"  # the row travels along


def test_prompts_are_left_padded_with_a_mask(model_dir: Path) -> None:
    tokenizer = load_tokenizer(model_dir)
    short, long = "Sort 3 1 2.", "What is seven minus four? Answer with a number."
    samples = policy(model_dir).build_dataset([{"prompt": short}, {"prompt": long}])
    batch = collate(samples)
    ids, mask = batch["prompt_ids"], batch["prompt_mask"]  # (2, P)
    short_ids, long_ids = tokenizer(short)["input_ids"], tokenizer(long)["input_ids"]
    assert ids.shape == mask.shape == (2, len(long_ids))
    pad = ids.shape[1] - len(short_ids)
    assert mask[0].tolist() == [0] * pad + [1] * len(short_ids)
    assert ids[0, pad:].tolist() == short_ids  # the prompt ends where generation starts
    assert ids[0, :pad].tolist() == [tokenizer.pad_token_id] * pad
    assert ids[1].tolist() == long_ids and bool(mask[1].all())
    assert batch["prompt_text"] == [short, long]


def test_left_truncation_keeps_the_tail(model_dir: Path) -> None:
    tokenizer = load_tokenizer(model_dir)
    full = tokenizer(RENDERED)["input_ids"]
    module = policy(model_dir, max_prompt_length=6, prompt_truncation="left")
    (sample,) = module.build_dataset([{"prompt": CHAT}])
    assert sample["prompt_ids"].tolist() == full[-6:]
    assert sample["prompt_text"] == tokenizer.decode(full[-6:])
    assert sample["prompt_text"].endswith("<|assistant|>\n")  # the generation prompt is kept


def test_a_prompt_too_long_is_refused_naming_its_row(model_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "prompts.jsonl"
    rows = [{"prompt": "Sort 3 1 2."}, {"prompt": CHAT}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    prompts = read_prompt_file(path, key="runtime.data_path")
    module = policy(model_dir, max_prompt_length=10)  # prompt_truncation: error, the default
    with pytest.raises(ValueError) as info:
        module.build_dataset(prompts)
    message = str(info.value)
    assert f"runtime.data_path {str(path)!r} row 1" in message
    assert "more than max_prompt_length (10)" in message and "prompt_truncation: left" in message
    with pytest.raises(ValueError, match=r"prompt 1 of the dataset: the prompt has \d+ tokens"):
        module.build_dataset(rows)  # prompts given in code: named by their index


def test_grpo_policy_groups_text_prompts(model_dir: Path) -> None:
    module = GroupPolicyInference("policy")
    args = {"model_path": str(model_dir), "max_new_tokens": 4}
    module.bind(JobConfig.model_validate({"models": {"policy": {"args": args}}}))
    samples = module.build_dataset([{"prompt": "a"}, {"prompt": CHAT}])
    assert [int(s["group_id"]) for s in samples] == [0, 1]
    assert samples[0]["prompt_ids"].shape == samples[1]["prompt_ids"].shape


def test_chat_prompts_need_a_chat_template(tmp_path: Path) -> None:
    plain = save_text_model(tmp_path / "plain", kind="gpt2", chat_template=None)
    with pytest.raises(ValueError, match=r"prompt 0 of the dataset: .* has no chat template"):
        encode_prompts(load_tokenizer(plain), [{"prompt": CHAT}])
    (sample,) = encode_prompts(load_tokenizer(plain), [{"prompt": "plain text"}])
    assert sample["prompt_text"] == "plain text"


def test_bad_text_datasets_are_refused(model_dir: Path) -> None:
    small_gpt = bound({"gpt": {"vocab_size": 8}, "max_new_tokens": 4})
    with pytest.raises(ValueError, match=r"models\.policy\.args: text prompts need a tokenizer"):
        small_gpt.build_dataset([{"prompt": "a"}])
    mixed = [{"prompt": "a"}, {"prompt_ids": torch.tensor([1])}]
    with pytest.raises(ValueError, match=r"prompt 1 differs in kind from prompt 0"):
        policy(model_dir).build_dataset(mixed)
    with pytest.raises(ValueError, match=r"prompt 0 is dict; PolicyInference takes dicts with"):
        policy(model_dir).build_dataset([{"text": "a"}])


def test_a_model_path_without_a_tokenizer_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"model_path .*nowhere.* is not a local directory"):
        load_tokenizer(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"model_path .*empty.* holds no tokenizer"):
        load_tokenizer(empty)
