"""The control channel's pickle: plain CPU tensors as their bytes, everything else as pickle does.

``dumps`` writes protocol 5 with out-of-band-capable buffers kept in band;
``pickle.loads`` reads it back with no reducer of ours (a tensor rebuilds
through :func:`_rebuild_tensor`, a module-level function, so the reader needs
only this module importable). Non-CPU, sparse or quantized tensors, and ones
whose dtype numpy lacks, fall back to torch's own reducer or a byte view.
"""

from __future__ import annotations

import copyreg
import io
import pickle
from typing import Any

import torch

__all__ = ["Pickler", "dumps"]


def _rebuild_tensor(
    data: bytearray, dtype: str, shape: tuple[int, ...], requires_grad: bool
) -> torch.Tensor:
    kind = getattr(torch, dtype)
    if not data:
        return torch.empty(shape, dtype=kind, requires_grad=requires_grad)
    t = torch.frombuffer(data, dtype=kind).view(shape)
    return t.requires_grad_() if requires_grad else t


# Dtypes numpy holds, so ``Tensor.numpy()`` gives their bytes without a torch view.
_NUMPY_DTYPES = {
    d: str(d).removeprefix("torch.")
    for d in (
        torch.float16,
        torch.float32,
        torch.float64,
        torch.int8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.uint8,
        torch.bool,
    )
}


def _reduce_tensor(t: torch.Tensor) -> Any:
    if not t.is_cpu or t.layout != torch.strided or t.is_quantized:
        return t.__reduce_ex__(5)
    name = _NUMPY_DTYPES.get(t.dtype)
    if name is not None and not t.requires_grad and t.is_contiguous() and t.numel():
        # The common case in as few torch calls as can be: each costs microseconds, more
        # in a process that has just woken up with cold caches, as a worker has.
        array: Any = t.numpy()
        return _rebuild_tensor, (pickle.PickleBuffer(array), name, tuple(t.shape), False)
    flat = t.detach().resolve_conj().resolve_neg().contiguous().view(-1)
    data: Any = flat.view(torch.uint8).numpy() if flat.numel() else bytearray()
    dtype = str(t.dtype).removeprefix("torch.")
    return _rebuild_tensor, (
        pickle.PickleBuffer(data),
        dtype,
        tuple(t.shape),
        t.requires_grad and t.is_leaf,
    )


_DISPATCH = {**copyreg.dispatch_table, torch.Tensor: _reduce_tensor}


class Pickler(pickle.Pickler):
    """Pickles plain CPU tensors as their bytes: torch's own reducer goes through
    ``torch.save`` and costs about 0.5 ms a tensor, which would be most of a call.
    A dispatch table, not ``reducer_override``: that would be a Python call per object."""

    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file, protocol=5)
        self.dispatch_table = _DISPATCH


def dumps(obj: Any) -> bytes:
    """``pickle.dumps`` with the fast tensor reducer; ``pickle.loads`` reads it."""
    buffer = io.BytesIO()
    Pickler(buffer).dump(obj)
    return buffer.getvalue()
