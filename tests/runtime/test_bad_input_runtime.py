"""Bad input that only shows once processes run, through the real `rlhfjob run`: entrypoints
that raise, exit, do not exist or do not compile, a model path that is not there; each
ends the job with the permanent exit (78) and a message naming the problem, no hang, no
process left. And nothing saved is lost: a run that fails after resuming leaves every
checkpoint it found intact and loadable.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import rlhfjob_run, write_job
from rlhfjob import checkpoint as ckpt

HERE = Path(__file__).resolve().parent
RUNTIME = dict(
    num_episode=1,
    sample_per_episode=8,
    generation_batch_size=4,
    train_micro_batch_size=4,
    train_global_batch_size=4,
)
TOY_MODELS = {"actor": {}, "scorer": {}, "learner": {"trainable": True}}
# The toy modules in one worker: a gang of two processes.
ONE_WORKER = {**RUNTIME, "colocation": [["actor", "scorer", "learner"]]}

TOY_ENTRY = """
from toys import Actor, Learner, Scorer, prompts
from rlhfjob import Engine, Environment, Trainer
actor, scorer, learner = Actor("actor"), Scorer("scorer"), Learner("learner")
def env_flow(batch):
    return scorer.forward_step(actor.forward_step(batch))
def trainer_flow(batch):
    learner.train_step(batch)
"""
LEARN = """
if __name__ == "__main__":
    Engine(Environment(env_flow), Trainer(trainer_flow)).set_dataset(prompts(8)).learn()
"""


def _entry(tmp_path: Path, body: str) -> str:
    path = tmp_path / "entry.py"
    path.write_text(textwrap.dedent(body))
    return path.name


def _run(tmp_path: Path, name: str, runtime: dict[str, Any], models: dict[str, Any], entry: str):  # type: ignore[no-untyped-def]
    # write_job takes the entrypoint relative to tests/runtime; give it ours by path.
    path = write_job(tmp_path, name, runtime, models, entry=str(tmp_path / entry))
    return rlhfjob_run(path)


# (id, entrypoint source, models, what the output must say); no models: the driver alone.
CASES: list[tuple[str, str, dict[str, Any], str]] = [
    (
        "raises-in-the-driver",
        'if __name__ == "__main__":\n    raise RuntimeError("no prompts: pass --data")\n',
        {},
        "failed in the entrypoint: RuntimeError: no prompts: pass --data",
    ),
    (
        "raises-on-import",
        'raise ImportError("needs the tokenizers package: pip install tokenizers")\n',
        TOY_MODELS,
        "needs the tokenizers package: pip install tokenizers",
    ),
    (
        "exits-non-zero",
        'import sys\nif __name__ == "__main__":\n    sys.exit(3)\n',
        {},
        "the entrypoint exited with 3",
    ),
    ("does-not-compile", "def broken(:\n    pass\n", {}, "SyntaxError"),
    (
        "model-path-missing",
        """
        from rlhfjob import Engine, Environment
        from rlhfjob.algorithms.ppo import PolicyInference
        policy = PolicyInference("policy")
        def env_flow(batch):
            return policy.forward_step(batch)
        if __name__ == "__main__":
            import torch
            prompts = [{"prompt_ids": torch.tensor([1, 2])} for _ in range(8)]
            Engine(Environment(env_flow)).set_dataset(prompts).learn()
        """,
        {"policy": {"args": {"model_path": "/nonexistent/hf-model", "max_new_tokens": 2}}},
        "model_path '/nonexistent/hf-model' is not a local directory",
    ),
]


@pytest.mark.parametrize(("case", "source", "models", "said"), CASES, ids=[c[0] for c in CASES])
def test_a_bad_entrypoint_ends_the_job_permanently_naming_the_problem(
    tmp_path: Path,
    job_name: str,
    case: str,
    source: str,
    models: dict[str, Any],
    said: str,
    bad_inputs: Any,
) -> None:
    runtime = {**RUNTIME, "colocation": [sorted(models)]} if len(models) > 1 else RUNTIME
    proc = _run(tmp_path, job_name, runtime, models, _entry(tmp_path, source))
    assert proc.returncode == 78, f"{case}: {proc.returncode}\n{proc.stderr[-3000:]}"
    # Workers' lines (their tracebacks too) come on stdout, prefixed with their name.
    assert said in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-3000:]
    bad_inputs.refused("entrypoint" if case != "model-path-missing" else "model path")


def test_an_entrypoint_module_that_does_not_exist_is_named(
    tmp_path: Path, job_name: str, bad_inputs: Any
) -> None:
    path = write_job(tmp_path, job_name, RUNTIME, {})
    manifest = yaml.safe_load(path.read_text())
    manifest["spec"]["entrypoint"] = {"module": "no_such_entry_module"}
    path.write_text(yaml.safe_dump(manifest))
    proc = rlhfjob_run(path)
    assert proc.returncode == 78, proc.stderr[-3000:]
    assert "spec.entrypoint.module 'no_such_entry_module' cannot be imported" in proc.stderr
    bad_inputs.refused("entrypoint")


POLICY_ENTRY = """
import torch
from rlhfjob import Engine, Environment
from rlhfjob.algorithms.ppo import PolicyInference
policy = PolicyInference("policy")
def env_flow(batch):
    return policy.forward_step(batch)
if __name__ == "__main__":
    prompts = [{"prompt_ids": torch.tensor([1, 2, 3, 10])} for _ in range(8)]
    Engine(Environment(env_flow)).set_dataset(prompts).learn()
"""


def test_a_misspelled_module_setting_ends_the_job_before_any_worker_trains(
    tmp_path: Path, job_name: str, bad_inputs: Any
) -> None:
    args = {"task": {"num_digits": 3}, "gpt": {"n_layer": 1, "n_head": 1, "n_embd": 8}}
    models = {"policy": {"args": {**args, "temprature": 0.5}}}
    proc = _run(tmp_path, job_name, RUNTIME, models, _entry(tmp_path, POLICY_ENTRY))
    assert proc.returncode == 78, f"{proc.returncode}\n{proc.stderr[-3000:]}"
    said = (
        "models.policy.args.temprature is not a PolicyInferenceConfig setting "
        "(did you mean temperature?); the known ones: "
    )
    assert said in proc.stderr, proc.stderr[-3000:]
    bad_inputs.refused("engine")


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


FAILING_ACTOR = """
class Actor(Actor):
    def forward_step(self, data, iteration):
        raise ValueError(f"bad sample in batch {iteration}: token ids out of range")
"""


def test_a_run_that_fails_after_resuming_loses_no_checkpoint(
    tmp_path: Path, job_name: str, bad_inputs: Any
) -> None:
    saved = tmp_path / "ckpt"
    where = {"data_checkpoint_path": str(saved), "save_episode_interval": 1}
    entry = _entry(tmp_path, TOY_ENTRY + LEARN)
    first = _run(tmp_path, job_name, {**ONE_WORKER, **where, "num_episode": 2}, TOY_MODELS, entry)
    assert first.returncode == 0, first.stderr[-3000:]
    before = _files(saved)
    latest = ckpt.latest_checkpoint(saved)
    assert latest is not None and before

    # Resumed after episode 2, the first model call raises: a permanent failure.
    failing = TOY_ENTRY.replace("actor, scorer", FAILING_ACTOR + "actor, scorer", 1) + LEARN
    entry = _entry(tmp_path, failing)
    second = _run(tmp_path, job_name, {**ONE_WORKER, **where, "num_episode": 4}, TOY_MODELS, entry)
    assert second.returncode == 78, second.stderr[-3000:]
    assert "token ids out of range" in second.stderr, second.stderr[-3000:]
    assert "resumed from" in second.stderr, second.stderr[-3000:]
    after = _files(saved)
    assert {k: v for k, v in after.items() if k in before} == before, "a saved file changed"
    assert ckpt.latest_checkpoint(saved) == latest
    _, engine = ckpt.load_checkpoint(latest)
    assert engine["episode"] == 2
    bad_inputs.refused("checkpoint")


SCALAR_ACTOR = """
class Actor(Actor):
    def forward_step(self, data, iteration):
        return {**data, "y": torch.tensor(0.5)}
"""


def test_a_model_output_without_a_batch_dim_fails_the_job_naming_the_key(
    tmp_path: Path, job_name: str, bad_inputs: Any
) -> None:
    # The worker stores the output before it counts its samples: the count's failure must
    # still reach the driver (and the output's consumers), not stop the worker's exec thread.
    source = "import torch\n" + TOY_ENTRY.replace(
        "actor, scorer", SCALAR_ACTOR + "actor, scorer", 1
    )
    entry = _entry(tmp_path, source + LEARN)
    proc = _run(tmp_path, job_name, ONE_WORKER, TOY_MODELS, entry)
    assert proc.returncode == 78, f"{proc.returncode}\n{proc.stderr[-3000:]}"
    assert "output key 'y' is a scalar tensor; give it a batch dim" in proc.stderr, proc.stderr
    bad_inputs.refused("entrypoint")
