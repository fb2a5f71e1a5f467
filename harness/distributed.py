"""torchrun: token counts, statistics and gradients are summed over ranks, so both losses are
normalised by global token counts (arXiv 2603.23871, "The loss": N_tok counted over all ranks).
Gradients are all-reduced once per step rather than by DDP's per-backward hooks, because ranks run
different numbers of micro-batches (their cliff counts differ)."""

import os

import torch
import torch.distributed as dist


def init_distributed():
    """Under torchrun (WORLD_SIZE > 1): start torch.distributed, NCCL on GPU, gloo on CPU. Each
    rank is pinned to cuda:LOCAL_RANK BEFORE NCCL starts: collectives that take no tensor
    (barrier, all_gather_object) run on the current device, which is otherwise cuda:0 on every
    rank (a hang or an NCCL error at the first validation or checkpoint)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return
    if torch.cuda.is_available():
        device = compute_device()
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")


def compute_device():
    """cuda:LOCAL_RANK when a GPU is present (LOCAL_RANK is 0 outside torchrun), else cpu."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def world():
    """(rank, world_size); (0, 1) without torchrun."""
    return (
        (dist.get_rank(), dist.get_world_size())
        if dist.is_available() and dist.is_initialized()
        else (0, 1)
    )


def all_sum(values, device):
    """Sum a list of floats over ranks."""
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    if world()[1] > 1:
        dist.all_reduce(t)
    return t.tolist()


def all_reduce_grads(model, bucket_elements=2**26):
    """Sum .grad over ranks (missing grads count as zeros): gradients are packed into flat buckets
    of one dtype (bf16 and fp32 gradients never share a bucket) of at most bucket_elements (256 MB
    in fp32), all-reduced bucket by bucket and copied back into the same .grad tensors, so the extra
    memory is one bucket, not a copy of every gradient, and every gradient keeps its dtype."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if world()[1] == 1:
        return
    by_dtype = {}
    for p in params:
        by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
    for grads in by_dtype.values():
        bucket, size = [], 0
        for i, g in enumerate(grads):
            bucket.append(g)
            size += g.numel()
            if size >= bucket_elements or i == len(grads) - 1:
                flat = torch.cat([b.reshape(-1) for b in bucket])  # [size], the bucket's dtype
                dist.all_reduce(flat)
                for b, part in zip(bucket, flat.split([b.numel() for b in bucket])):
                    b.copy_(part.view_as(b))  # in place: the .grad tensor is not rebound
                bucket, size = [], 0
