"""Executors run model calls for the Engine: in-process here, over RPC in worker processes.

Both implement ``Executor`` (``base.py``); the Engine never knows which one it drives.

The RPC executor's data plane, by module:

- ``rpc``: the driver's end, ``RpcExecutor``;
- ``protocol``: the messages, one frozen dataclass per operation;
- ``placement``: replicas, process groups and sync routes (pure functions);
- ``worker``: the worker's runtime, running operations in the driver's order;
- ``operations``: what a worker does for each operation (``HANDLERS``);
- ``pulls``: stored values, and workers pulling their inputs from producers.
"""

from rlhfjob.executor.base import Executor, join_samples
from rlhfjob.executor.local import LocalExecutor

__all__ = ["Executor", "LocalExecutor", "join_samples"]
