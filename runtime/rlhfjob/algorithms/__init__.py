"""Ready-made RLHF algorithms: PPO and GRPO modules, their pure losses, a task, and engines.

Import the modules from their files (``rlhfjob.algorithms.ppo``,
``rlhfjob.algorithms.grpo``); the losses live in ``rlhfjob.algorithms.losses``,
each module's typed settings (its ``models.<name>.args``) in
``rlhfjob.algorithms.configs``. The ready-made engines, which wire those modules
into the examples' flows, are here: ``GRPOEngine``, ``PPOEngine`` and its
ChatLearn name ``RLHFEngine`` (``rlhfjob.algorithms.engines``).
"""

from rlhfjob.algorithms.engines import GRPOEngine, PPOEngine, RLHFEngine

__all__ = ["GRPOEngine", "PPOEngine", "RLHFEngine"]
