"""Prompt files: real JSONL, JSON and parquet files written here, read with ``datasets``
as samples whose other columns travel along; bad files are refused naming what to fix;
the Engine reads ``runtime.data_path`` and ``eval_data_path`` when no dataset is set."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("datasets")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from rlhfjob import BaseModule, Engine, Environment, Evaluator  # noqa: E402
from rlhfjob.data import collate, split_samples  # noqa: E402
from rlhfjob.text import read_prompt_file, rows_to_samples  # noqa: E402

CHAT = [
    {"role": "system", "content": "Answer with a number."},
    {"role": "user", "content": "What is two plus three?"},
]
ROWS: list[dict[str, Any]] = [
    {"prompt": "What is seven minus four?", "answer": "3", "level": 1},
    {"prompt": "Sort 3 1 2.", "answer": "1 2 3", "level": 2},
]
CHAT_ROWS: list[dict[str, Any]] = [
    {"prompt": CHAT, "answer": "5", "level": 1},
    {"prompt": CHAT[1:], "answer": "5", "level": 3},
]


def write(path: Path, rows: list[dict[str, Any]]) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet"])
@pytest.mark.parametrize("rows", [ROWS, CHAT_ROWS], ids=["text", "chat"])
def test_a_file_becomes_samples_with_its_other_columns(
    tmp_path: Path, suffix: str, rows: list[dict[str, Any]]
) -> None:
    path = write(tmp_path / f"prompts{suffix}", rows)
    samples = read_prompt_file(path, key="runtime.data_path")
    assert [s["prompt"] for s in samples] == [r["prompt"] for r in rows]
    assert [(s["answer"], s["level"]) for s in samples] == [(r["answer"], r["level"]) for r in rows]
    assert samples[1]["prompt_source"] == f"runtime.data_path {str(path)!r} row 1"


def test_prompt_key_names_the_column(tmp_path: Path) -> None:
    rows = [{"question": r["prompt"], "answer": r["answer"]} for r in ROWS]
    path = write(tmp_path / "q.jsonl", rows)
    samples = read_prompt_file(path, key="runtime.data_path", prompt_key="question")
    assert [s["prompt"] for s in samples] == [r["question"] for r in rows]
    assert "question" not in samples[0]


def test_a_missing_file_is_named_with_its_key(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(ValueError, match=r"runtime\.data_path .*nope\.jsonl.* is not a file"):
        read_prompt_file(missing, key="runtime.data_path")


def test_a_missing_prompt_column_lists_the_columns_there_are(tmp_path: Path) -> None:
    path = write(tmp_path / "p.parquet", [{"question": "hi", "answer": "1"}])
    with pytest.raises(ValueError) as info:
        read_prompt_file(path, key="runtime.data_path")
    message = str(info.value)
    assert "no column 'prompt'" in message and "question" in message and "answer" in message
    assert "runtime.prompt_key" in message


def test_an_unknown_suffix_is_refused_with_the_known_ones(tmp_path: Path) -> None:
    path = tmp_path / "prompts.csv"
    path.write_text("prompt\nhi\n")
    with pytest.raises(
        ValueError, match=r"'\.csv' is none of \['\.json', '\.jsonl', '\.parquet'\]"
    ):
        read_prompt_file(path, key="runtime.data_path")


def test_an_unparsable_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": \n')
    with pytest.raises(ValueError, match=r"broken\.jsonl.* could not be read as json"):
        read_prompt_file(path, key="runtime.eval_data_path")


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ([{"prompt": "a"}, {"prompt": None}], r"src row 1 has no 'prompt' \(absent or null"),
        ([{"prompt": 7}], r"src row 0: the prompt is int"),
        ([{"prompt": [{"role": "user"}]}], r"src row 0: chat message 0 is"),
        ([{"prompt": "a", "prompt_ids": [1]}], r"src row 0 has column\(s\) \['prompt_ids'\]"),
        ([], r"src has no rows"),
    ],
)
def test_bad_rows_are_refused_naming_the_row(rows: list[dict[str, Any]], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        rows_to_samples(rows, source="src")


def test_text_columns_batch_as_lists_and_split_back() -> None:
    samples = [
        {**s, "id": torch.tensor(i)} for i, s in enumerate(rows_to_samples(CHAT_ROWS, source="src"))
    ]
    batch = collate(samples)
    assert batch["prompt"] == [CHAT, CHAT[1:]]  # message lists kept whole, not transposed
    assert batch["answer"] == ["5", "5"]
    assert torch.equal(batch["id"], torch.tensor([0, 1]))
    assert torch.equal(batch["level"], torch.tensor([1, 3]))
    assert split_samples(batch) == [{**s, "level": torch.tensor(s["level"])} for s in samples]


class Reader(BaseModule):
    """Records the prompts and answers of each batch it gets."""

    def setup(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def forward_step(self, data: dict[str, Any], iteration: int) -> dict[str, Any]:
        self.seen.extend(zip(data["prompt"], data["answer"], strict=True))
        return {"n": torch.ones(len(data["prompt"]))}

    def eval_step(self, data: dict[str, Any]) -> dict[str, Any]:
        return {"n": torch.full((len(data["prompt"]),), float(len(data["prompt"])))}


def test_the_engine_reads_data_path_and_eval_data_path(tmp_path: Path) -> None:
    train = write(tmp_path / "train.jsonl", ROWS)
    evals = write(tmp_path / "eval.parquet", [{"q": "x", "answer": "y"}] * 3)
    reader = Reader("reader")
    runtime = {
        "num_episode": 1,
        "sample_per_episode": 2,
        "generation_batch_size": 2,
        "eval_episode_interval": 1,
        "data_shuffle": False,
        "data_path": str(train),
        "eval_data_path": str(evals),
        "prompt_key": "prompt",
    }
    engine = Engine(
        Environment(lambda batch: reader.forward_step(batch)),
        evaluator=Evaluator(lambda batch: reader.eval_step(batch)),
        config={"runtime": runtime},
    )
    with pytest.raises(ValueError, match=r"runtime\.eval_data_path .*eval\.parquet.* no column"):
        engine.learn(progress=False)  # the eval file has q, not prompt: refused before any run
    evals = write(tmp_path / "eval.parquet", [{"prompt": "x", "answer": "y"}] * 3)
    summaries = engine.learn(progress=False)
    assert reader.seen == [(r["prompt"], r["answer"]) for r in ROWS]
    assert summaries[0]["eval/n"] == pytest.approx((2 * 2 + 1) / 3)  # batches of 2, then 1


def test_without_a_dataset_or_data_path_learn_says_which_to_give() -> None:
    reader = Reader("reader")
    engine = Engine(Environment(lambda batch: reader.forward_step(batch)), config={})
    with pytest.raises(ValueError, match=r"set_dataset\(prompts\) or set runtime\.data_path"):
        engine.learn(progress=False)
