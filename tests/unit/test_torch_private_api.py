"""Every private torch name rlhfjob relies on still exists and still does its job.

torch offers no public hook for signing RPC pickles nor for choosing
TensorPipe's transports or setting the default RPC timeout after startup;
``rlhfjob.comm.rpc_pickles`` and ``rlhfjob.comm.rendezvous`` use the private
names. A torch upgrade that moves one fails here, naming it, instead of at a
job's start (or, worse for the pickler, silently unsigned). The pin the patch
was verified against is named in ``rpc_pickles``' docstring and must be the
one in pyproject.toml.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch.distributed.rpc as rpc
from torch.distributed.rpc import internal as rpc_internal

from rlhfjob.comm import rpc_pickles
from rlhfjob.comm.rpc_pickles import sign_rpc_pickles

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_rpc_pickles_docstring_names_the_pinned_torch() -> None:
    pin = re.search(r'"torch==([^"]+)"', PYPROJECT.read_text())
    assert pin is not None, "pyproject.toml no longer pins torch=="
    assert f"torch {pin.group(1)}" in (rpc_pickles.__doc__ or ""), (
        f"torch is pinned to {pin.group(1)}: re-verify rlhfjob/comm/rpc_pickles.py against it "
        "and name that version in its docstring"
    )


def test_the_private_rpc_pickler_is_what_rpc_serializes_through() -> None:
    pickler = getattr(rpc_internal, "_internal_rpc_pickler", None)
    assert pickler is not None, "torch.distributed.rpc.internal._internal_rpc_pickler is gone"
    for method in ("serialize", "deserialize"):
        assert callable(getattr(pickler, method, None)), f"_internal_rpc_pickler.{method} is gone"
    # What the C++ agent calls (the module's serialize/deserialize) must reach the patch.
    bare, _ = rpc_internal.serialize([1, 2])
    undo = sign_rpc_pickles(b"k" * 32, name="guard")
    try:
        data, tensors = rpc_internal.serialize([1, 2])
        assert data[32:] == bare and data[:32] != bare[:32], (
            "torch.distributed.rpc.internal.serialize no longer goes through "
            "_internal_rpc_pickler: RPC pickles would travel unsigned"
        )
        assert rpc_internal.deserialize(data, tensors) == [1, 2]
    finally:
        undo()


def test_the_private_rpc_knobs_exist() -> None:
    assert callable(getattr(rpc, "_set_rpc_timeout", None)), "rpc._set_rpc_timeout is gone"
    options = rpc.TensorPipeRpcBackendOptions(
        init_method="rlhfjob://", rpc_timeout=5, _transports=["uv"], _channels=["basic"]
    )
    assert options.rpc_timeout == 5
