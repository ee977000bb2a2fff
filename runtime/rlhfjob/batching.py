"""A model's own batch size: ``models.<name>.generation_batch_size`` below the batch it gets.

ChatLearn splits such a model's input along the batch into pieces of that size,
calls the method on each, and concatenates the outputs; so does
``BaseModule.call_hook``, with these two pure functions. The pieces of one call
share its ``iteration``.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["batch_size", "concat", "pieces"]


def batch_size(data: dict[str, Any]) -> int | None:
    """The batch dimension of a dict of tensors and lists; None when no value has one
    (a dict of scalars or other values is not split)."""
    for value in data.values():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return int(value.shape[0])
        if isinstance(value, (list, tuple)):
            return len(value)
    return None


def pieces(data: dict[str, Any], size: int) -> list[dict[str, Any]]:
    """``data`` cut along the batch into pieces of ``size`` (the last may be shorter);
    values without the batch dimension go whole into every piece."""
    n = batch_size(data)
    assert n is not None and size >= 1
    batched = {
        key
        for key, value in data.items()
        if (isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == n)
        or (isinstance(value, (list, tuple)) and len(value) == n)
    }
    return [
        {
            key: value[start : start + size] if key in batched else value
            for key, value in data.items()
        }
        for start in range(0, n, size)
    ]


def concat(outputs: list[Any], label: str) -> Any:
    """The outputs of one call's pieces as one: dicts joined key by key along the batch
    (tensors by ``torch.cat``, lists end to end); None when every piece returned None.

    Raises ValueError naming ``label`` and the key when the pieces do not join: a
    different set of keys, a mix of None and dicts, or tensors whose other
    dimensions differ (pad each piece's output to one length).
    """
    if all(out is None for out in outputs):
        return None
    if not all(isinstance(out, dict) for out in outputs):
        kinds = sorted({type(out).__name__ for out in outputs})
        raise ValueError(
            f"{label} returned {', '.join(kinds)} for the pieces of one batch "
            "(models.<name>.generation_batch_size split it); return a dict every time"
        )
    keys = list(outputs[0])
    if any(list(out) != keys for out in outputs[1:]):
        raise ValueError(
            f"{label} returned different keys for the pieces of one batch "
            "(models.<name>.generation_batch_size split it); return the same keys every time"
        )
    joined: dict[str, Any] = {}
    for key in keys:
        values = [out[key] for out in outputs]
        if all(isinstance(v, torch.Tensor) for v in values):
            try:
                joined[key] = torch.cat(values)
            except RuntimeError as exc:
                raise ValueError(
                    f"{label} output {key!r} does not join across the pieces of one batch "
                    f"(models.<name>.generation_batch_size split it): {exc}; pad it to one "
                    "length"
                ) from exc
        elif all(isinstance(v, (list, tuple)) for v in values):
            joined[key] = [item for v in values for item in v]
        else:
            raise ValueError(
                f"{label} output {key!r} is neither a tensor nor a list in every piece of one "
                "batch (models.<name>.generation_batch_size split it)"
            )
    return joined
