"""The policy's forward over rollouts, for hdpo.py's losses. Three things keep a step's
forward/backward small:
- a group's G rollouts share their prompt: it is forwarded once and its KV cache is repeated for
  the completions that continue it (the gradient reaches the prompt once, through that cache);
- micro-batches are packed by padded tokens (--micro-batch-tokens), longest first, so short
  rollouts are not padded to the longest one of the step;
- hidden states are kept only at the positions that predict completion tokens, and the lm_head
  runs over chunks of positions into ONE reused [chunk, V] fp32 buffer, so a full-vocabulary fp32
  tensor exists for one chunk at a time, never for a micro-batch:
  - head_gather_lse(hidden, head, idx): (logits at idx [N, k], logsumexp [N]), differentiable.
    log π(target) = gathered - lse (GRPO); the student's log-probs on the teacher's top-k (JSD_k).
  - head_topk(hidden, head, k): the teacher's top-k values and indices, no graph.
Checked against whole-sequence forwards and the full-vocabulary computation in tests/test_hdpo.py.
"""

import inspect

import torch
import torch.nn.functional as F
from transformers import DynamicCache


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


def pack_micro_batches(prompt_lens, comp_lens, owner, budget, shared_prompt=True):
    """Split sequences (completion i continues prompt owner[i]) into micro-batches of at most
    `budget` padded tokens: p prompts of up to Lp tokens plus r completions of up to Lc tokens cost
    p·Lp + r·Lc (shared prompt), or r·(Lp + Lc) when each sequence is forwarded whole. Groups go
    longest first, a group's completions together where they fit. A sequence longer than the
    budget is a micro-batch of its own. -> list of lists of sequence indices."""
    total = lambda i: prompt_lens[owner[i]] + comp_lens[i]
    longest = {}
    for i in range(len(owner)):
        longest[owner[i]] = max(longest.get(owner[i], 0), total(i))
    order = sorted(range(len(owner)), key=lambda i: (-longest[owner[i]], owner[i], -comp_lens[i]))

    def cost(seqs):
        owners = {owner[i] for i in seqs}
        lp, lc = max(prompt_lens[o] for o in owners), max(comp_lens[i] for i in seqs)
        return len(owners) * lp + len(seqs) * lc if shared_prompt else len(seqs) * (lp + lc)

    batches = [[]]
    for i in order:
        if batches[-1] and cost(batches[-1] + [i]) > budget:
            batches.append([])
        batches[-1].append(i)
    return [b for b in batches if b]


def right_padded(rows, device):
    """Token lists -> ids [B, L] and attention mask [B, L], right-padded with 0."""
    L = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), L, dtype=torch.long)  # [B, L]
    attn = torch.zeros(len(rows), L, dtype=torch.long)  # [B, L]
    for b, r in enumerate(rows):
        ids[b, : len(r)], attn[b, : len(r)] = torch.tensor(r, dtype=torch.long), 1
    return ids.to(device), attn.to(device)


def completion_hidden(model, prompts, completions, owner, device, shared_prompt=True):
    """Hidden states [N, H] at the positions that predict each completion token, and those tokens
    [N]; N = all completion tokens, completion order then token order. Completion i continues
    prompts[owner[i]]. With shared_prompt, each prompt is forwarded once (right-padded) and its KV
    cache is repeated for its completions, which are forwarded on top of it; otherwise every
    (prompt, completion) is forwarded whole. Both give the same values and gradients."""
    base, targets = model.base_model, [t for c in completions for t in c]
    if not shared_prompt:
        hidden = base(*right_padded([prompts[o] + c for o, c in zip(owner, completions)], device),
                      use_cache=False).last_hidden_state  # [B, L, H]  # fmt: skip
        rows = [b for b, c in enumerate(completions) for _ in c]
        cols = [len(prompts[o]) - 1 + j for o, c in zip(owner, completions) for j in range(len(c))]
        return hidden[rows, cols], torch.tensor(targets, device=device)  # [N, H], [N]
    used = sorted(set(owner))  # forward only the prompts this micro-batch continues
    slot = {o: k for k, o in enumerate(used)}
    p_ids, p_attn = right_padded([prompts[o] for o in used], device)  # [P, Lp]
    c_ids, c_attn = right_padded(completions, device)  # [B, Lc]
    # one embedding lookup for both forwards: one [V, H] embedding gradient per micro-batch, not two
    embeds = model.get_input_embeddings()(torch.cat([p_ids.flatten(), c_ids.flatten()]))  # [., H]
    p_emb, c_emb = embeds.split([p_ids.numel(), c_ids.numel()])
    cache = DynamicCache(config=model.config)
    p_hidden = base(inputs_embeds=p_emb.view(*p_ids.shape, -1), attention_mask=p_attn,
                    use_cache=True, **{cache_kwarg(base): cache}
                    ).last_hidden_state  # [P, Lp, H]  # fmt: skip
    rows = torch.tensor([slot[o] for o in owner], device=device)  # [B] prompt slot of each row
    cache.batch_select_indices(rows)  # [B, heads, Lp, d] per layer: each row's prompt keys/values
    c_pos = rows.new_tensor([len(prompts[o]) for o in owner])[:, None] + torch.arange(
        c_ids.shape[1], device=device
    )  # [B, Lc] positions right after each row's own prompt
    c_hidden = base(inputs_embeds=c_emb.view(*c_ids.shape, -1),
                    attention_mask=torch.cat([p_attn[rows], c_attn], 1), position_ids=c_pos,
                    use_cache=True,
                    **{cache_kwarg(base): cache}).last_hidden_state  # [B, Lc, H]  # fmt: skip
    # token 0 of a completion is predicted at its prompt's last position, token j at completion j-1
    out = []
    for b, (o, c) in enumerate(zip(owner, completions)):
        out += [p_hidden[slot[o], len(prompts[o]) - 1][None], c_hidden[b, : len(c) - 1]]
    return torch.cat(out), torch.tensor(targets, device=device)  # [N, H], [N]


def cache_kwarg(model):
    """The forward keyword of the KV cache: `cache` (transformers >= 5) or `past_key_values`."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def grouped(prompts):
    """Prompt id lists, one per sequence -> (distinct prompts, owner index of each sequence)."""
    index, distinct = {}, []
    for p in prompts:
        if tuple(p) not in index:
            index[tuple(p)] = len(distinct)
            distinct.append(list(p))
    return distinct, [index[tuple(p)] for p in prompts]


def shares_prompts(model):
    """Gradient checkpointing turns the KV cache off in training forwards (transformers), so with
    it every sequence is forwarded whole."""
    name = "is_activation_checkpointing"  # transformers >= 5; is_gradient_checkpointing before
    return not getattr(model, name if hasattr(type(model), name) else "is_gradient_checkpointing")
