"""Executors run model calls for the Engine: in-process here, over RPC in worker processes.

Both implement ``Executor`` (``base.py``); the Engine never knows which one it drives.
"""

from rlhfjob.executor.base import Executor
from rlhfjob.executor.local import LocalExecutor

__all__ = ["Executor", "LocalExecutor"]
