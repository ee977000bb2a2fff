"""A collective whose peer died fails retryable (a restart can help); a bug does not."""

from __future__ import annotations

import torch.distributed as dist

from rlhfjob.executor.protocol import lost_peer


def test_gloo_transport_errors_are_a_lost_peer() -> None:
    gloo = "[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:547] Connection closed by peer"
    assert lost_peer(RuntimeError(gloo + " [127.0.0.1]:25003"))
    assert lost_peer(RuntimeError("... Connection reset by peer"))
    assert lost_peer(dist.DistNetworkError("store gone"))


def test_code_errors_are_not() -> None:
    assert not lost_peer(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not lost_peer(ValueError("Connection closed by peer"))  # not a transport error
