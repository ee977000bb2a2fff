"""Does FSDP2 (``torch.distributed.fsdp.fully_shard``) train on CPU with gloo here?

Two processes on 127.0.0.1 (a free port, a timeout each) shard a tiny model with
``fully_shard``, run forward, backward and an AdamW step, gather the full state
dict, and compare it with the same steps done unsharded in one process. Prints one
line per check and exits 0 only when every check held::

    .venv/bin/python bench/fsdp2_probe.py

Not a test: issue 12 asks whether FSDP2 runs on CPU in the pinned torch before
``args.fsdp`` is wired; this answers that question on the machine at hand.
"""

from __future__ import annotations

import datetime
import os
import socket
import sys
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

WORLD = 2
TIMEOUT_S = 120


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 16), nn.GELU(), nn.Linear(16, 1)
    )


def _batch(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + rank)
    return torch.randn(4, 8, generator=g), torch.randn(4, 1, generator=g)


def _reference() -> dict[str, torch.Tensor]:
    """Two AdamW steps on the mean loss of both ranks' batches, unsharded."""
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        loss = sum(((model(x) - y) ** 2).mean() for x, y in map(_batch, range(WORLD))) / WORLD
        loss.backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _worker(rank: int, port: int, out: dict[int, str]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    lines: list[str] = []
    try:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
        )
        from torch.distributed.fsdp import fully_shard

        dist.init_process_group(
            "gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=TIMEOUT_S)
        )
        model = _model()
        for layer in (model[0], model[2], model[4]):
            fully_shard(layer)
        fully_shard(model)
        local = sum(p.to_local().numel() for p in model.parameters())  # type: ignore[attr-defined]
        total = sum(p.numel() for p in model.parameters())
        lines.append(f"fully_shard ok: rank {rank} holds {local} of {total} parameters")
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        for _ in range(2):
            opt.zero_grad()
            x, y = _batch(rank)
            ((model(x) - y) ** 2).mean().backward()  # FSDP2 averages gradients over ranks
            opt.step()
        lines.append("forward, backward (reduce-scatter) and AdamW step ok")
        full = get_model_state_dict(
            model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        if rank == 0:
            ref = _reference()
            worst = max(float((full[k] - ref[k]).abs().max()) for k in ref)
            lines.append(f"full state dict gathered; max |sharded - unsharded| = {worst:.2e}")
            if worst > 1e-5:
                raise AssertionError("sharded training differs from unsharded training")
        dist.barrier()
        dist.destroy_process_group()
        out[rank] = "ok\n" + "\n".join(lines)
    except Exception:
        out[rank] = "FAILED\n" + "\n".join(lines) + "\n" + traceback.format_exc()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    print(f"torch {torch.__version__}, gloo available: {dist.is_gloo_available()}")
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        out = manager.dict()
        port = _free_port()
        procs = [ctx.Process(target=_worker, args=(r, port, out)) for r in range(WORLD)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(TIMEOUT_S)
        hung = [p for p in procs if p.is_alive()]
        for p in hung:
            p.kill()
            p.join()
        ok = not hung
        for rank in range(WORLD):
            report = out.get(rank, "no report (hung or crashed)")
            ok = ok and report.startswith("ok")
            print(f"--- rank {rank}\n{report}")
    print("FSDP2 on CPU/gloo: " + ("works" if ok else "does NOT work"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
