"""rlhfjob: RLHF training jobs with ChatLearn's Custom Flow API.

from rlhfjob import Engine, Environment, Trainer, Evaluator, BaseModule
"""

from rlhfjob.engine import Engine, Environment, EvalEngine, Evaluator, Trainer
from rlhfjob.flow import ControlDependencies, FlowError
from rlhfjob.module import BaseModule
from rlhfjob_operator.spec import JobConfig, SpecError

__all__ = [
    "BaseModule",
    "ControlDependencies",
    "Engine",
    "Environment",
    "EvalEngine",
    "Evaluator",
    "FlowError",
    "JobConfig",
    "SpecError",
    "Trainer",
]
__version__ = "0.1.0"
