"""Ready-made RLHF algorithms: PPO and GRPO modules, their pure losses, and a task.

Import the modules from their files (``rlhfjob.algorithms.ppo``,
``rlhfjob.algorithms.grpo``); the losses live in ``rlhfjob.algorithms.losses``,
each module's typed settings (its ``models.<name>.args``) in
``rlhfjob.algorithms.configs``.
"""
