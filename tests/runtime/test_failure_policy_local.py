"""runPolicy.failurePolicy under the real ``rlhfjob run`` (issue 14): a worker process
that exits with code 3 fails the job at once when a rule names its role and code, and
spends the backoff limit like any failure when the rule names another role. Processes
have no pod conditions: only exit-code rules apply locally."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml
from test_bad_input_runtime import RUNTIME

from conftest import rlhfjob_run, write_job

ENTRY = """
import os
from toys import Actor, Learner, Scorer, prompts
from rlhfjob import Engine, Environment, Trainer

class DyingScorer(Scorer):
    def forward_step(self, data, iteration):
        os._exit(3)  # the process ends with code 3, as a crashed native library's would

actor, scorer, learner = Actor("actor"), DyingScorer("scorer"), Learner("learner")
def env_flow(batch):
    return scorer.forward_step(actor.forward_step(batch))
def trainer_flow(batch):
    learner.train_step(batch)
if __name__ == "__main__":
    Engine(Environment(env_flow), Trainer(trainer_flow)).set_dataset(prompts(8)).learn()
"""


@pytest.mark.parametrize(
    ("role", "code", "said"),
    [
        ("scorer", 78, "FailJob by runPolicy.failurePolicy.rules[0] matched"),
        ("actor", 75, "runPolicy.backoffLimit (0) restarts spent"),
    ],
)
def test_an_exit_code_rule_for_a_role_fails_the_job_at_once(
    tmp_path: Path, job_name: str, role: str, code: int, said: str
) -> None:
    entry = tmp_path / "entry.py"
    entry.write_text(textwrap.dedent(ENTRY))
    models = {"actor": {}, "scorer": {}, "learner": {"trainable": True}}
    path = write_job(tmp_path, job_name, RUNTIME, models, entry=str(entry))
    manifest = yaml.safe_load(path.read_text())
    manifest["spec"]["runPolicy"]["failurePolicy"] = {
        "rules": [
            {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [3], "role": role}}
        ]
    }
    path.write_text(yaml.safe_dump(manifest))
    proc = rlhfjob_run(path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == code, out[-3000:]
    assert "(role scorer, replica 0" in out and "exited with code 3" in out, out[-3000:]
    assert said in out, out[-3000:]
    assert "restarting the gang" not in out
