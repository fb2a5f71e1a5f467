"""Chunked lm_head for hdpo.py's losses: the full-vocabulary logits exist for `chunk` positions at a
time, in ONE reused [chunk, V] fp32 buffer in forward and in backward, so memory grows with the
number of completion tokens only through [N, H] and [N, k] tensors, never [N, V].

- head_gather_lse(hidden, head, idx): (logits at idx [N, k], logsumexp [N]), differentiable.
  log π(target) = gathered - lse (GRPO); the student's log-probs on the teacher's top-k (JSD_k).
- head_topk(hidden, head, k): the teacher's top-k values and indices, no graph.
Checked against the straightforward full-vocabulary computation in tests/test_hdpo.py.
"""

import torch
import torch.nn.functional as F


def _logits_into(buf, h, weight, bias):
    """buf[:n] = h W^T (+ b) in fp32, written in place when it can be (fp32, no autocast); under
    autocast (bf16 on GPU) the matmul runs in bf16 and is copied into the fp32 buffer."""
    out = buf[: h.shape[0]]
    if h.dtype == weight.dtype == torch.float32 and not torch.is_autocast_enabled(h.device.type):
        return (
            torch.mm(h, weight.t(), out=out)
            if bias is None
            else torch.addmm(bias, h, weight.t(), out=out)
        )
    return out.copy_(F.linear(h, weight, bias))


class HeadGatherLSE(torch.autograd.Function):
    """hidden [N, H], idx [N, k] -> (logits at idx [N, k], logsumexp of the logits [N]), fp32, where
    logits = hidden W^T + b over the full vocabulary, `chunk` positions at a time into one [chunk,
    V] buffer. Saves only hidden and the log-normaliser; backward recomputes each chunk's logits
    once into one buffer, turns them into their gradient in place (g_lse · softmax + g_idx scattered
    at idx) and accumulates the two gradient matmuls. log π(target) = gathered − lse; JSD_k needs
    nothing else."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, idx, chunk):
        N, V = hidden.shape[0], weight.shape[0]
        buf = hidden.new_empty((min(N, chunk), V), dtype=torch.float32)  # the only [., V] tensor
        gathered = hidden.new_empty(idx.shape, dtype=torch.float32)  # [N, k]
        lse = hidden.new_empty((N,), dtype=torch.float32)  # [N]
        for s in range(0, N, chunk):
            z = _logits_into(buf, hidden[s : s + chunk], weight, bias)  # [n, V]
            gathered[s : s + chunk] = z.gather(-1, idx[s : s + chunk])
            m = z.amax(-1, keepdim=True)  # [n, 1]
            lse[s : s + chunk] = z.sub_(m).exp_().sum(-1).log_().add_(m[:, 0])  # overwrites z
        ctx.save_for_backward(hidden, weight, bias, idx, lse)
        ctx.chunk = chunk
        ctx.autocast = (
            torch.is_autocast_enabled(hidden.device.type),
            torch.get_autocast_dtype(hidden.device.type),
        )
        return gathered, lse

    @staticmethod
    def backward(ctx, g_idx, g_lse):
        hidden, weight, bias, idx, lse = ctx.saved_tensors
        chunk, (amp_on, amp_dtype) = ctx.chunk, ctx.autocast
        N, V = hidden.shape[0], weight.shape[0]
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        gh = torch.zeros_like(hidden, dtype=torch.float32) if need_h else None
        gw = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
        gb = torch.zeros_like(bias, dtype=torch.float32) if need_b and bias is not None else None
        buf = hidden.new_empty((min(N, chunk), V), dtype=torch.float32)
        w_mm = (
            weight.to(amp_dtype) if amp_on else weight.float()
        )  # gradient matmuls in the forward's precision
        for s in range(0, N, chunk):
            h = hidden[s : s + chunk]
            with torch.autocast(
                hidden.device.type, dtype=amp_dtype, enabled=amp_on
            ):  # as in forward
                z = _logits_into(buf, h, weight, bias)  # [n, V] recomputed
            gz = (
                z.zero_()
                if g_lse is None
                else z.sub_(lse[s : s + chunk, None]).exp_().mul_(g_lse[s : s + chunk, None])
            )
            if g_idx is not None:
                gz.scatter_add_(
                    1, idx[s : s + chunk], g_idx[s : s + chunk].float()
                )  # d gathered / d z
            g_mm, h_mm = gz.to(w_mm.dtype), h.to(w_mm.dtype)  # no copies in fp32
            if w_mm.dtype == torch.float32:  # accumulate in place
                if gh is not None:
                    gh[s : s + chunk].addmm_(g_mm, w_mm)
                if gw is not None:
                    gw.addmm_(g_mm.t(), h_mm)
            # bf16 matmuls, as autograd through an autocast F.linear does; summed over chunks in
            # fp32
            else:
                if gh is not None:
                    gh[s : s + chunk] += torch.mm(g_mm, w_mm)
                if gw is not None:
                    gw += torch.mm(g_mm.t(), h_mm)
            if gb is not None:
                gb += gz.sum(0)
        return (
            None if gh is None else gh.to(hidden.dtype),
            None if gw is None else gw.to(weight.dtype),
            None if gb is None else gb.to(bias.dtype),
            None,
            None,
        )


def head_gather_lse(hidden, head, idx, chunk=1024):
    """(lm_head(hidden) at idx [N, k], logsumexp of lm_head(hidden) [N]): differentiable,
    chunked."""
    return HeadGatherLSE.apply(hidden, head.weight, head.bias, idx, chunk)


@torch.no_grad()
def head_topk(hidden, head, k, chunk=1024):
    """Top-k of lm_head(hidden): values [N, k] fp32 and indices [N, k], chunked into one buffer, no
    graph."""
    N, V = hidden.shape[0], head.weight.shape[0]
    buf = hidden.new_empty((min(N, chunk), V), dtype=torch.float32)
    k = min(k, V)
    values = hidden.new_empty((N, k), dtype=torch.float32)
    indices = torch.empty((N, k), dtype=torch.long, device=hidden.device)
    for s in range(0, N, chunk):
        torch.topk(
            _logits_into(buf, hidden[s : s + chunk], head.weight, head.bias),
            k,
            -1,
            out=(values[s : s + chunk], indices[s : s + chunk]),
        )
    return values, indices
