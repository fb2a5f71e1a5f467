"""forward.py: micro-batches packed by tokens, the shared-prompt forward against forwarding each
rollout whole, and the chunked lm_head with the models' logit transforms against the full
[N, V] computation (it is also checked through the losses in test_hdpo.py and, on several
architectures, in test_architectures.py)."""

import pytest
import torch
import torch.nn.functional as F
from conftest import GROUP_SEQS, SEQS, grads, small_model

from forward import (
    LogitTransform,
    completion_hidden,
    grouped,
    head_gather_lse,
    head_topk,
    pack_micro_batches,
)


@pytest.mark.parametrize("tokens", [1, 7, 12, 40])
def test_micro_batches_hold_every_sequence_once_within_the_token_budget(tokens):
    prompts, owner = grouped([p for p, _ in GROUP_SEQS + SEQS])
    comp_lens = [len(c) for _, c in GROUP_SEQS + SEQS]
    prompt_lens = [len(p) for p in prompts]
    for shared in (True, False):
        batches = pack_micro_batches(prompt_lens, comp_lens, owner, tokens, shared)
        assert sorted(i for b in batches for i in b) == list(range(len(owner)))
        for b in batches:
            lp = max(prompt_lens[owner[i]] for i in b)
            lc = max(comp_lens[i] for i in b)
            n_prompts = len({owner[i] for i in b})
            cost = n_prompts * lp + len(b) * lc if shared else len(b) * (lp + lc)
            assert cost <= tokens or len(b) == 1  # a too-long sequence goes alone
        longest = [max(prompt_lens[o] + c for o, c in zip(owner, comp_lens) if o == owner[b[0]])
                   for b in batches]  # fmt: skip
        assert longest == sorted(longest, reverse=True)  # longest groups first: little padding


def test_shared_prompt_forward_equals_forwarding_each_rollout_whole():
    """One prompt pass whose KV cache the G rollouts continue gives the same hidden states and
    the same gradient as forwarding every (prompt, rollout) sequence whole."""
    prompts, owner = grouped([p for p, _ in GROUP_SEQS])
    comps = [c for _, c in GROUP_SEQS]
    out = {}
    for shared in (True, False):
        model = small_model()
        hidden, targets = completion_hidden(model, prompts, comps, owner, "cpu", shared)
        (hidden * torch.linspace(-1, 1, hidden.shape[-1])).sum().backward()
        out[shared] = hidden.detach(), targets, grads(model)
    assert torch.equal(out[True][1], out[False][1])
    assert torch.allclose(out[True][0], out[False][0], atol=1e-5)
    for k, g in out[False][2].items():
        assert torch.allclose(out[True][2][k], g, atol=1e-5), k


# ---------------------------------------------------------------- the chunked lm_head


def head_case(bias=True, N=23, H=16, V=50):
    torch.manual_seed(0)
    head = torch.nn.Linear(H, V, bias=bias)
    hidden = torch.randn(N, H).requires_grad_()
    idx = torch.randint(0, V, (N, 3))
    weights = torch.randn(N, 3), torch.linspace(-1, 1, N)  # d loss / d gathered, d loss / d lse
    return head, hidden, idx, weights


@pytest.mark.parametrize(
    "t",
    [LogitTransform(0.25), LogitTransform(softcap=3.0), LogitTransform(2.0, 3.0, 0.7),
     LogitTransform(temperature=0.7)],
    ids=["granite-scale", "gemma2-softcap", "scale-softcap-T", "temperature"],
)  # fmt: skip
def test_chunked_head_applies_the_logit_transform_exactly(t):
    """head_gather_lse and head_topk on the logits softcap · tanh(scale · u / softcap) / T (or
    scale · u / T), u = h W^T + b, chunk by chunk: values and gradients (hidden, weight, bias)
    equal the full [N, V] computation in float64."""
    head, hidden, idx, (w_idx, w_lse) = head_case()
    gathered, lse = head_gather_lse(hidden, head, idx, chunk=5, transform=t)
    ((gathered * w_idx).sum() + (lse * w_lse).sum()).backward()
    got = [gathered, lse, hidden.grad, head.weight.grad, head.bias.grad]
    h64, W64, b64 = (x.detach().double().requires_grad_() for x in (hidden, head.weight, head.bias))
    u = h64 @ W64.t() + b64  # [N, V]
    z = t.softcap * torch.tanh(t.scale * u / t.softcap) if t.softcap else t.scale * u
    z = z / t.temperature
    ref_g, ref_lse = z.gather(-1, idx), z.logsumexp(-1)
    ((ref_g * w_idx.double()).sum() + (ref_lse * w_lse.double()).sum()).backward()
    for a, b in zip(got, [ref_g, ref_lse, h64.grad, W64.grad, b64.grad]):
        assert torch.allclose(a.double(), b, rtol=1e-5, atol=1e-6)
    values, indices = head_topk(hidden.detach(), head, 7, chunk=5, transform=t)
    ref_v, ref_i = z.detach().topk(7, -1)
    assert torch.equal(indices, ref_i) and torch.allclose(values.double(), ref_v, atol=1e-6)


def test_autocast_casts_the_head_weight_once_per_forward_and_once_per_backward():
    """Under bf16 autocast the [V, H] weight is cast to bf16 once in the forward and once in the
    backward, not once per chunk (5 chunks here); the forward equals autocast's F.linear on the
    whole batch bit for bit, the gradients equal it within bf16 rounding."""
    from torch.utils._python_dispatch import TorchDispatchMode

    head, hidden, idx, (w_idx, w_lse) = head_case()

    class CountCasts(TorchDispatchMode):  # fp32 -> bf16 copies of a [V, H] tensor
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is torch.ops.aten._to_copy.default and args[0].shape == head.weight.shape:
                self.n += kwargs.get("dtype") == torch.bfloat16
            return func(*args, **kwargs)

    with torch.autocast("cpu", dtype=torch.bfloat16), CountCasts() as forward_casts:
        gathered, lse = head_gather_lse(hidden, head, idx, chunk=5)
    with CountCasts() as backward_casts:
        ((gathered * w_idx).sum() + (lse * w_lse).sum()).backward()
    assert (forward_casts.n, backward_casts.n) == (1, 1)
    got = [hidden.grad, head.weight.grad, head.bias.grad]
    hidden.grad, head.weight.grad, head.bias.grad = None, None, None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = F.linear(hidden, head.weight, head.bias).float()  # [N, V]
    m = z.amax(-1, keepdim=True)
    ref_lse = (z - m).exp().sum(-1).log() + m[:, 0]
    assert torch.equal(gathered, z.gather(-1, idx)) and torch.equal(lse, ref_lse)
    ((z.gather(-1, idx) * w_idx).sum() + (ref_lse * w_lse).sum()).backward()
    for a, b in zip(got, [hidden.grad, head.weight.grad, head.bias.grad]):
        assert (a - b).norm() <= 1e-2 * b.norm()
