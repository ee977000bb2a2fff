"""Rewards over text: TRL's calling convention with a real tokenizer, weights and None,
the errors, the reward model read at the last non-pad token, and the arithmetic
verifier."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")

import rewardfns
from textmodels import make_tokenizer, save_reward_model, save_text_model

from rlhfjob.algorithms.configs import RewardConfig
from rlhfjob.rewards import RewardModel, build_scorer, is_trl_style
from rlhfjob.rewards.arith import exact_answer, last_number
from rlhfjob.text import encode_prompts

CHAT = [{"role": "user", "content": "What is two plus three?"}]
ROWS = [
    {"prompt": CHAT, "answer": "5", "level": 2},
    {"prompt": "What is seven minus four?", "answer": "3", "level": 1},
]
RESPONSES = ["The answer is 5.", "Seven minus four is 3"]


def _batch(tokenizer: Any, rows: list[dict[str, Any]], responses: list[str]) -> dict[str, Any]:
    """A batch as the policy hands it on: prompts encoded, responses ending at EOS and
    right-padded, the other columns batched (numbers as a tensor, text as lists)."""
    samples = encode_prompts(tokenizer, rows)
    ids = [
        tokenizer(r, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        for r in responses
    ]
    width = max(map(len, ids)) + 2
    response = torch.full((len(ids), width), tokenizer.pad_token_id)  # (B, R)
    mask = torch.zeros_like(response)  # (B, R)
    for i, row in enumerate(ids):
        response[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), 1
    return {
        "prompt": [s["prompt"] for s in samples],
        "prompt_text": [s["prompt_text"] for s in samples],
        "prompt_ids": torch.stack([s["prompt_ids"] for s in samples]),
        "prompt_mask": torch.stack([s["prompt_mask"] for s in samples]),
        "answer": [s["answer"] for s in samples],
        "level": torch.tensor([s["level"] for s in samples]),
        "response_ids": response,
        "response_mask": mask,
        "old_logprobs": torch.zeros(response.shape),
    }


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_text_model(tmp_path_factory.mktemp("policy"))


@pytest.fixture
def tokenizer() -> Any:
    return make_tokenizer()


def test_a_trl_function_gets_decoded_prompts_completions_and_the_other_columns(
    model_dir: Path, tokenizer: Any
) -> None:
    rewardfns.CALLS.clear()
    scorer = build_scorer("reward", paths=["rewardfns:record"], tokenizer_path=str(model_dir))
    data = _batch(tokenizer, ROWS, RESPONSES)
    scores, means = scorer(data, step=7)

    (call,) = rewardfns.CALLS
    assert call["prompts"] == [CHAT, "What is seven minus four?"]  # as the file holds them
    assert call["completions"] == [[{"role": "assistant", "content": RESPONSES[0]}], RESPONSES[1]]
    eos = tokenizer.eos_token_id
    assert [ids[-1] for ids in call["completion_ids"]] == [eos, eos]  # up to EOS, no padding
    assert tokenizer.decode(call["completion_ids"][1][:-1]) == RESPONSES[1]
    assert call["answer"] == ["5", "3"] and call["level"] == [2, 1]  # a tensor column: a list
    assert call["trainer_state"].global_step == 7
    assert not {"prompt", "prompt_ids", "prompt_mask", "prompt_text", "response_ids"} & set(call)
    assert "old_logprobs" not in call
    assert scores.tolist() == [len(RESPONSES[0]), len(RESPONSES[1])]
    assert means == {"record_mean": pytest.approx(sum(map(len, RESPONSES)) / 2)}


def test_token_prompts_are_decoded_and_a_function_without_kwargs_gets_what_it_names(
    model_dir: Path, tokenizer: Any
) -> None:
    rewardfns.CALLS.clear()
    data = _batch(tokenizer, ROWS, RESPONSES)
    del data["prompt"], data["prompt_text"]
    scorer = build_scorer(
        "reward", paths=["rewardfns:record", "rewardfns:only_named"], tokenizer_path=str(model_dir)
    )
    scorer(data)
    first, second = rewardfns.CALLS
    rendered = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    assert first["prompts"] == [rendered, "What is seven minus four?"]  # pads skipped
    assert first["completions"] == RESPONSES  # no chat prompt known: plain text
    assert set(second) == {"completions", "answer"}


def test_weights_apply_and_none_counts_as_zero_in_the_sum(model_dir: Path, tokenizer: Any) -> None:
    scorer = build_scorer(
        "reward",
        paths=["rewardfns:ones", "rewardfns:none_for_first"],
        weights=[2.0, 0.5],
        tokenizer_path=str(model_dir),
    )
    scores, means = scorer(_batch(tokenizer, ROWS, RESPONSES))
    assert scores.tolist() == [2.0, 2.0 + 0.5 * 4.0]  # the None is NaN, summed as 0
    assert means == {"ones_mean": 1.0, "none_for_first_mean": 4.0}  # over the scored ones


def test_the_batch_form_keeps_working_and_is_told_apart_by_its_signature() -> None:
    def batch_form(data: dict[str, Any]) -> torch.Tensor:
        return data["response_mask"].sum(1).float()

    assert not is_trl_style(batch_form) and is_trl_style(rewardfns.ones)
    assert is_trl_style(lambda **kw: None) and is_trl_style(exact_answer)
    scorer = build_scorer("reward", reward_fn=batch_form)  # needs no tokenizer
    data = {
        "response_ids": torch.zeros(2, 3),
        "response_mask": torch.tensor([[1, 1, 0], [1, 0, 0]]),
    }
    assert scorer(data)[0].tolist() == [2.0, 1.0]

    def wrong(data: dict[str, Any]) -> torch.Tensor:
        return torch.zeros(3)

    with pytest.raises(ValueError, match=r"'wrong' returned shape \(3,\); .* shape \(2,\)"):
        build_scorer("reward", reward_fn=wrong)(data)


def test_wrong_lengths_missing_keywords_and_imports_are_named(
    model_dir: Path, tokenizer: Any
) -> None:
    data = _batch(tokenizer, ROWS, RESPONSES)
    tok = str(model_dir)
    with pytest.raises(ValueError, match="'too_few' returned 1 scores for 2 completions"):
        build_scorer("reward", paths=["rewardfns:too_few"], tokenizer_path=tok)(data)
    with pytest.raises(ValueError, match="'needs_solution' needs 'solution', which the batch"):
        build_scorer("reward", paths=["rewardfns:needs_solution"], tokenizer_path=tok)(data)
    with pytest.raises(
        ValueError, match=r"models.scorer.args.reward_fn\[1\]: cannot import 'rewardfns:nope'"
    ):
        build_scorer("scorer", paths=["rewardfns:ones", "rewardfns:nope"], tokenizer_path=tok)
    with pytest.raises(
        ValueError, match="models.scorer.args.reward_fn: cannot import 'no_such_mod:f'"
    ):
        build_scorer("scorer", paths=["no_such_mod:f"])
    with pytest.raises(ValueError, match="reward_fn: 'rewardfns:NOT_A_FUNCTION' is a int"):
        build_scorer("scorer", paths=["rewardfns:NOT_A_FUNCTION"])
    with pytest.raises(ValueError, match="models.scorer.args.tokenizer_path is needed"):
        build_scorer("scorer", paths=["rewardfns:ones"])
    with pytest.raises(ValueError, match="has no reward function"):
        build_scorer("scorer")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            {"reward_fn": ["a:f", "b:g"], "reward_weights": [1.0]},
            "models.m.args.reward_weights has 1 weights but reward_fn names 2 functions and "
            "reward_model_path 0 model",
        ),
        ({"reward_fn": ["a:f", "b.g"]}, "models.m.args.reward_fn[1] 'b.g' is not of the form"),
        ({"reward_fn": []}, "models.m.args.reward_fn must be a 'package.module:function' or a"),
        ({"reward_weights": [1.0, "x"]}, "models.m.args.reward_weights[1] must be of type float"),
        ({"reward_model_path": "/m"}, "models.m.args.tokenizer_path must be set with reward_model"),
    ],
)
def test_reward_settings_are_checked_on_the_driver(args: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as info:
        RewardConfig.from_args("m", args)
    assert str(info.value).startswith(message), str(info.value)


def test_one_path_or_a_list_and_weights_are_read() -> None:
    one = RewardConfig.from_args("m", {"reward_fn": "a.b:f"})
    assert one.reward_fn == ("a.b:f",) and one.reward_weights is None
    both = RewardConfig.from_args(
        "m",
        {
            "reward_fn": ["a:f", "b:g"],
            "reward_weights": [1, "0.5", 2.0],
            "reward_model_path": "/rm",
            "tokenizer_path": "/p",
        },
    )
    assert both.reward_weights == (1.0, 0.5, 2.0)


def _direct(path: Path, text: str) -> float:
    """The reward model called on one unpadded text, as a user would."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(path)
    ids = AutoTokenizer.from_pretrained(path)(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return float(model(input_ids=ids).logits[0, 0])


@pytest.mark.parametrize("side", ["right", "left"])
def test_the_reward_model_scores_as_a_direct_call_on_the_same_text(
    tmp_path: Path, side: str
) -> None:
    path = save_reward_model(tmp_path / "rm", padding_side=side)
    model = RewardModel(str(path))
    prompts = [CHAT, "What is seven minus four?", "Hi"]
    completions = [[{"role": "assistant", "content": "5"}], " It is 3, I think.", " ok"]
    scores = model(prompts, completions)  # padded: the texts differ in length
    chat = model.tokenizer.apply_chat_template(
        [*CHAT, {"role": "assistant", "content": "5"}], tokenize=False
    )
    expected = [
        _direct(path, chat),
        _direct(path, prompts[1] + completions[1]),
        _direct(path, "Hi ok"),
    ]
    assert scores.tolist() == pytest.approx(expected, abs=1e-5)
    lengths = {len(model.token_ids(p, c)) for p, c in zip(prompts, completions, strict=True)}
    assert len(lengths) == 3  # so the batch was padded


def test_the_reward_model_combines_with_functions_after_them(
    tmp_path: Path, model_dir: Path, tokenizer: Any
) -> None:
    path = save_reward_model(tmp_path / "rm")
    scorer = build_scorer(
        "reward",
        paths=["rewardfns:ones"],
        weights=[1.0, 10.0],
        model_path=str(path),
        tokenizer_path=str(model_dir),
    )
    scores, means = scorer(_batch(tokenizer, ROWS, RESPONSES))
    alone = RewardModel(str(path))(
        [CHAT, ROWS[1]["prompt"]], [[{"role": "assistant", "content": RESPONSES[0]}], RESPONSES[1]]
    )
    assert scores.tolist() == pytest.approx((1.0 + 10.0 * alone).tolist(), abs=1e-5)
    assert set(means) == {"ones_mean", "rm_mean"}


def test_exact_answer_reads_the_last_number_of_text_and_chat_completions() -> None:
    completions = [
        "2 + 3 = 5",
        [{"role": "assistant", "content": "First 4, then 1,234."}],
        "I think 6",
        "no number here",
        "-2.5",
        "7",
    ]
    answers = ["5", 1234, "5", "5", "-2.50", "#### 7"]
    assert exact_answer(completions, answers) == [1.0, 1.0, 0.0, 0.0, 1.0, 1.0]
    assert exact_answer(["5"], ["five"]) == [None]  # an answer with no number: not applicable
    assert last_number("") is None and last_number("3 then 4.") == 4.0
    assert exact_answer(completions=["1"], answer=["1"], trainer_state=None, prompts=["q"]) == [1.0]


def test_the_readme_example_is_a_trl_reward_function(model_dir: Path, tokenizer: Any) -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("### Rewards over text", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    fn = namespace["format_reward"]
    assert is_trl_style(fn)
    scorer = build_scorer("reward", reward_fn=fn, tokenizer_path=str(model_dir))
    responses = ["The answer is 5.", "Seven minus four is 3"]
    scores, means = scorer(_batch(tokenizer, ROWS, responses))
    assert scores.tolist() == [1.0, 0.0] and means == {"format_reward_mean": 0.5}
