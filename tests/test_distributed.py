"""Data parallelism is exact: W ranks with b samples each = one process with W·b samples.

Real processes and a real gloo process group on 127.0.0.1: each rank runs the TIPSv2
meta-architecture's training forward on its slice of a batch (CLIP with negatives
gathered from every rank, DINO and iBOT++ with centres averaged over ranks), backward,
and the loop's gradient averaging; the results must equal one process on the whole batch.
"""

from __future__ import annotations

import socket

import pytest
import torch
import torch.multiprocessing as mp

from tests.test_meta_arch import batch, small_cfg
from tipsv2_core.train.loop import broadcast_parameters, sync_gradients
from tipsv2_core.train.meta_arch import TIPSv2MetaArch

pytestmark = pytest.mark.integration
B = 8  # the global batch


def _step(arch: TIPSv2MetaArch, b: dict) -> tuple[float, dict[str, torch.Tensor], dict]:
    loss, parts = arch.training_forward(b, teacher_temp=0.04, ssl_scale=1.0)
    loss.backward()
    sync_gradients(arch.trainable_modules())
    grads = {n: p.grad.clone() for n, p in arch.trainable_modules().named_parameters()}
    return float(loss.detach()), grads, {k: float(v) for k, v in parts.items()}


def _rank(rank: int, world: int, port: int, queue) -> None:
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    torch.manual_seed(100 + rank)  # different seeds: broadcast must make the models equal
    arch = TIPSv2MetaArch(small_cfg())
    broadcast_parameters(arch)
    full = batch(b=B, seed=1)
    mine = {k: v[rank * B // world : (rank + 1) * B // world] for k, v in full.items()}
    loss, grads, parts = _step(arch, mine)
    # The loop logs the mean over ranks of each rank's loss.
    mean = torch.tensor([loss])
    torch.distributed.all_reduce(mean)
    # numpy, not tensors: torch would share tensors by file descriptor, which dies with us
    queue.put((rank, float(mean) / world, {n: g.numpy() for n, g in grads.items()}, parts))
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_match_one_process_with_the_whole_batch():
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port, world = _free_port(), 2
    procs = [ctx.Process(target=_rank, args=(r, world, port, queue)) for r in range(world)]
    for p in procs:
        p.start()
    results = sorted((queue.get(timeout=300) for _ in procs), key=lambda r: r[0])
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0

    torch.manual_seed(100)  # rank 0's seed: the weights every rank trained
    arch = TIPSv2MetaArch(small_cfg())
    loss, grads, _ = _step(arch, batch(b=B, seed=1))

    for rank, dist_loss, arrays, parts in results:
        dist_grads = {n: torch.from_numpy(a) for n, a in arrays.items()}
        assert dist_loss == pytest.approx(loss, rel=1e-5, abs=1e-6), rank
        assert {"clip_loss", "dino_loss", "ibot_loss"} <= set(parts)
        worst = max(
            float((dist_grads[n] - g).abs().max() / (g.abs().max() + 1e-12))
            for n, g in grads.items()
        )
        assert worst < 1e-4, f"rank {rank}: largest relative gradient difference {worst:.2e}"
    # Both ranks hold the same averaged gradients, so their optimiser steps agree.
    for n in grads:
        assert (results[0][2][n] == results[1][2][n]).all(), n
