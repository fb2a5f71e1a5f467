"""forward.py: micro-batches packed by tokens, and the shared-prompt forward against forwarding
each rollout whole. (The chunked lm_head is checked through the losses in test_hdpo.py, against
the full-vocabulary whole-sequence computation.)"""

import pytest
import torch
from conftest import GROUP_SEQS, SEQS, grads, small_model

from forward import completion_hidden, grouped, pack_micro_batches


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
