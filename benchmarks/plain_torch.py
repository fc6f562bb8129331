"""The training epoch a plain PyTorch script runs, shuffled as the train stage's loop shuffles:
the peers of benchmarks/train_ingest.py and benchmarks/end_to_end.py.

The train stage hands its loop the training split in one seeded global order, in chunks of
`LoopConfig.fetch_rows` rows, and permutes each chunk anew every epoch (pipeline/model/loop.py).
A peer that shuffled less would do less work and train worse; one that shuffled more would do
more. So both peers do exactly this on tensors already in memory: one gather a chunk, then slices.
"""

from __future__ import annotations

import time


def chunk_rows(batch_size: int) -> int:
    """The stage's fetch size for this batch size: whole batches, about LoopConfig.fetch_rows."""
    from pipeline.model.loop import LoopConfig

    return batch_size * max(1, LoopConfig.fetch_rows // batch_size)


def train_epoch(model, optimizer, loss_fn, tensors: tuple, batch_size: int, generator) -> float:
    """One epoch over (features, codes, label) in their order, each chunk permuted; its seconds
    (synchronised, so a GPU's queue is drained before the clock stops)."""
    import torch

    features, codes, labels = tensors
    rows, fetch = labels.shape[0], chunk_rows(batch_size)
    model.train()
    started = time.perf_counter()
    loss_sum = torch.zeros((), dtype=torch.float64, device=labels.device)
    for first in range(0, rows, fetch):
        stop = min(first + fetch, rows)
        permutation = torch.randperm(stop - first, generator=generator).to(labels.device)
        x, c, y = (t[first:stop][permutation] for t in (features, codes, labels))
        for start in range(0, stop - first, batch_size):
            end = start + batch_size
            loss = loss_fn(model(x[start:end], c[start:end]), y[start:end])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum.add_(loss.detach(), alpha=y[start:end].shape[0])
    float(loss_sum)
    return time.perf_counter() - started


def in_one_order(tensors: tuple, seed: int) -> tuple:
    """The rows in one seeded global order (the stage's shuffle before training)."""
    import torch

    order = torch.randperm(tensors[0].shape[0], generator=torch.Generator().manual_seed(seed))
    return tuple(t[order.to(t.device)] for t in tensors)
