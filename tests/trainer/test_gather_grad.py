"""Gradients through the cross-process feature gather: one optimizer step's gradients with two
gloo processes (each half the batch, DDP's gradient average) equal one process on the whole batch.

Weights after a few AdamW steps (test_ddp_resume) hide scale errors — Adam divides them out — so
a gather that drops other ranks' gradient contributions (issue 20's planted bug (b): half the
gradient) passes a weight comparison. This compares the gradients themselves.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from finetune.features import gather
from finetune.losses import dhn_nce

N, D_IN, D_OUT = 8, 6, 5


def _data():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(N, D_IN, generator=g), torch.randn(N, D_IN, generator=g),
            torch.randn(D_IN, D_OUT, generator=g), torch.randn(D_IN, D_OUT, generator=g))


def _grads(rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of DHN-NCE over the gathered batch wrt the two towers' weights."""
    x_img, x_txt, w_img0, w_txt0 = _data()
    w_img, w_txt = w_img0.clone().requires_grad_(), w_txt0.clone().requires_grad_()
    img, txt = gather(x_img[rows] @ w_img), gather(x_txt[rows] @ w_txt)
    dhn_nce(img, txt, temperature=0.6, beta1=0.15, beta2=0.15)["loss"].backward()
    return w_img.grad, w_txt.grad


def _worker(rank: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        half = N // 2
        grads = _grads(slice(rank * half, (rank + 1) * half))
        for g in grads:  # what DDP does with the local gradients: all-reduce, mean
            dist.all_reduce(g)
            g /= 2
        if rank == 0:
            torch.save(grads, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_two_process_gradients_equal_one_process(tmp_path):
    one = _grads(slice(0, N))
    out = tmp_path / "grads.pt"
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    two = torch.load(out)
    for a, b in zip(one, two, strict=True):
        assert a.abs().max() > 1e-3  # a real gradient
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)
