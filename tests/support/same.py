"""``assert_same``: two nested states (dicts, lists, tensors, arrays) equal bit for bit."""

from __future__ import annotations

from typing import Any

import torch


def assert_same(a: Any, b: Any, where: str) -> None:
    """Assert ``a`` and ``b`` equal: the same keys and lengths all the way down, tensors
    and arrays of one dtype and shape with equal elements (NaN never equals itself),
    anything else by ``==``. ``where`` names the path in the failure."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif hasattr(a, "shape"):
        assert a.dtype == b.dtype and a.shape == b.shape and bool((a == b).all()), where
    else:
        assert a == b, where
