"""The one place rlhfjob patches torch's private RPC pickler: every RPC pickle signed.

torch RPC unpickles whatever reaches a TensorPipe port. Its C++ side hands
every request, response and remote exception to
``torch.distributed.rpc.internal.serialize``/``deserialize``, which call the
module's one ``_internal_rpc_pickler`` (a private attribute): replacing that
object's two methods signs every pickle sent and verifies every one received
before a byte of it is unpickled. Tensors travel beside the pickle and are no
code. torch offers no public hook for this.

Verified against torch 2.9.1, the pin in ``pyproject.toml``.
``tests/unit/test_torch_private_api.py`` fails, naming the attribute, when a
torch upgrade moves or drops what this patch relies on; upgrade the pin only
with that test passing.
"""

from __future__ import annotations

import hashlib
import hmac
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch.distributed.rpc import internal as rpc_internal

from rlhfjob.comm.signing import TAG_BYTES
from rlhfjob_operator.contract import ENV_JOB_SECRET

__all__ = ["sign_rpc_pickles"]


class _RefusedMessage(RuntimeError):
    pass


_REPORTED_REFUSALS = 10


def sign_rpc_pickles(key: bytes, *, name: str) -> Callable[[], None]:
    """Sign every pickle torch RPC sends; verify every one it receives before unpickling.

    Both directions go through ``torch.distributed.rpc.internal``'s one pickler
    (requests, responses, remote exceptions; tensors travel beside the pickle
    and are not code). A message without a valid signature raises before a
    byte of it is unpickled: its sender gets the error, this process names it
    on stderr (the first few), and goes on. Returns the function that undoes it.
    """
    pickler = rpc_internal._internal_rpc_pickler
    serialize, deserialize = pickler.serialize, pickler.deserialize
    refusals = [0]

    def signed_serialize(obj: Any) -> tuple[bytes, list[torch.Tensor]]:
        payload, tensors = serialize(obj)
        return hmac.new(key, payload, hashlib.sha256).digest() + payload, tensors

    def verified_deserialize(binary_data: bytes, tensor_table: list[torch.Tensor]) -> Any:
        tag, payload = binary_data[:TAG_BYTES], binary_data[TAG_BYTES:]
        if len(binary_data) < TAG_BYTES or not hmac.compare_digest(
            tag, hmac.new(key, payload, hashlib.sha256).digest()
        ):
            refusals[0] += 1
            if refusals[0] <= _REPORTED_REFUSALS:
                print(
                    f"rlhfjob {name}: refused an RPC message of {len(binary_data)} bytes that is "
                    f"not signed with this job's secret ({ENV_JOB_SECRET}); nothing of it was "
                    "unpickled. A process outside the job reached this worker's RPC port.",
                    file=sys.stderr,
                    flush=True,
                )
            raise _RefusedMessage(
                f"{name} refused this RPC message: it is not signed with the job's secret; "
                "nothing of it was unpickled"
            )
        return deserialize(payload, tensor_table)

    pickler.serialize, pickler.deserialize = signed_serialize, verified_deserialize  # type: ignore[method-assign]

    def undo() -> None:
        pickler.serialize, pickler.deserialize = serialize, deserialize  # type: ignore[method-assign]

    return undo
