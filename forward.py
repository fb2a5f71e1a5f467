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
  Both compute the logits the engine samples from: the model's own transform of the lm_head
  product (Granite's scaling, Gemma 2's soft-cap: logit_transform) at the sampling temperature.
What this forward cannot compute exactly is refused at start-up (check_training_support), and a
sliding attention window makes every sequence go whole (shares_prompts). Checked against
whole-sequence forwards and the full-vocabulary computation in tests/test_hdpo.py, on several
architectures in tests/test_architectures.py (docs/architectures.md).
"""

import inspect
from typing import NamedTuple

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer


class LogitTransform(NamedTuple):
    """What the model does between its lm_head product u = h W^T + b and the logits it returns,
    and the sampling temperature T the engine divides them by (engine.sample_categorical):
    logits = softcap · tanh(scale · u / softcap) / T, or scale · u / T without a soft-cap.
    Granite divides by logits_scaling, Cohere multiplies by logit_scale, Gemma 2/3 soft-cap."""

    scale: float = 1.0
    softcap: float | None = None
    temperature: float = 1.0


PLAIN = LogitTransform()  # logits = lm_head(hidden), at T = 1 (Qwen2, Llama, Mistral, ...)

# config fields that scale the lm_head product before the soft-cap, and their power
LOGIT_SCALES = {"logit_scale": 1, "logits_scaling": -1, "output_multiplier": 1,
                "lm_head_multiplier": 1}  # fmt: skip


def logit_transform(model, temperature=1.0):
    """The model's LogitTransform, read from its config, at sampling temperature T.
    check_training_support verifies it against the model's own logits at start-up."""
    cfg = model.config.get_text_config()
    scale = 1.0
    for name, power in LOGIT_SCALES.items():
        if getattr(cfg, name, None) is not None:
            scale *= float(getattr(cfg, name)) ** power
    softcap = getattr(cfg, "final_logit_softcapping", None)
    return LogitTransform(scale, None if softcap is None else float(softcap), float(temperature))


def _transform_(z, t):
    """z [n, V]: the lm_head product u, overwritten by the logits (LogitTransform t)."""
    if t.softcap is not None:
        return z.mul_(t.scale / t.softcap).tanh_().mul_(t.softcap / t.temperature)
    return z.mul_(t.scale / t.temperature) if t.scale != t.temperature else z


def _matmul_weights(weight, bias, amp_dtype):
    """The lm_head's weight and bias in the dtype its matmul runs in: the autocast dtype (bf16 on
    GPU) cast once here, for all chunks, rather than once per chunk by autocast's F.linear; their
    own dtype without autocast (amp_dtype None)."""
    if amp_dtype is None:
        return weight, bias
    return weight.to(amp_dtype), None if bias is None else bias.to(amp_dtype)


def _amp_dtype(device_type):
    on = torch.is_autocast_enabled(device_type)
    return torch.get_autocast_dtype(device_type) if on else None


def _logits_into(buf, h, weight, bias):
    """buf[:n] = h W^T (+ b) in fp32; weight and bias are in the matmul's dtype (_matmul_weights):
    fp32 is written in place, bf16 (autocast on GPU) is computed in bf16 and copied into the
    buffer."""
    out = buf[: h.shape[0]]
    if h.dtype == weight.dtype == torch.float32:
        return (
            torch.mm(h, weight.t(), out=out)
            if bias is None
            else torch.addmm(bias, h, weight.t(), out=out)
        )
    return out.copy_(F.linear(h.to(weight.dtype), weight, bias))


class HeadGatherLSE(torch.autograd.Function):
    """hidden [N, H], idx [N, k] -> (logits at idx [N, k], logsumexp of the logits [N]), fp32, where
    logits = transform(hidden W^T + b) over the full vocabulary (LogitTransform: the model's scale
    and soft-cap, the sampling temperature), `chunk` positions at a time into one [chunk, V]
    buffer. Saves only hidden and the log-normaliser; backward recomputes each chunk's logits once
    into one buffer (two with a soft-cap), turns them into their gradient in place (g_lse · softmax
    + g_idx scattered at idx, times the transform's derivative (scale / T)·(1 − tanh²)) and
    accumulates the two gradient matmuls. Under autocast the weight is cast to bf16 once per
    forward and once per backward. log π(target) = gathered − lse; JSD_k needs nothing else."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, idx, chunk, t):
        N, V = hidden.shape[0], weight.shape[0]
        amp_dtype = _amp_dtype(hidden.device.type)
        w, b = _matmul_weights(weight, bias, amp_dtype)  # one cast per forward
        buf = hidden.new_empty((min(N, chunk), V), dtype=torch.float32)  # the only [., V] tensor
        gathered = hidden.new_empty(idx.shape, dtype=torch.float32)  # [N, k]
        lse = hidden.new_empty((N,), dtype=torch.float32)  # [N]
        for s in range(0, N, chunk):
            z = _transform_(_logits_into(buf, hidden[s : s + chunk], w, b), t)  # [n, V] logits
            gathered[s : s + chunk] = z.gather(-1, idx[s : s + chunk])
            m = z.amax(-1, keepdim=True)  # [n, 1]
            lse[s : s + chunk] = z.sub_(m).exp_().sum(-1).log_().add_(m[:, 0])  # overwrites z
        ctx.save_for_backward(hidden, weight, bias, idx, lse)
        ctx.chunk, ctx.transform, ctx.amp_dtype = chunk, t, amp_dtype
        return gathered, lse

    @staticmethod
    def backward(ctx, g_idx, g_lse):
        hidden, weight, bias, idx, lse = ctx.saved_tensors
        chunk, t, amp_dtype = ctx.chunk, ctx.transform, ctx.amp_dtype
        N, V = hidden.shape[0], weight.shape[0]
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        gh = torch.zeros_like(hidden, dtype=torch.float32) if need_h else None
        gw = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
        gb = torch.zeros_like(bias, dtype=torch.float32) if need_b and bias is not None else None
        w, b = _matmul_weights(weight, bias, amp_dtype)  # one cast per backward
        w_mm = w if amp_dtype else weight.float()  # gradient matmuls in the forward's precision
        buf = hidden.new_empty((min(N, chunk), V), dtype=torch.float32)
        capped = hidden.new_empty(buf.shape, dtype=torch.float32) if t.softcap else None
        for s in range(0, N, chunk):
            h = hidden[s : s + chunk]
            u = _logits_into(buf, h, w, b)  # [n, V] the lm_head product, recomputed
            if t.softcap is None:
                z = _transform_(u, t)  # [n, V] logits
            else:  # u becomes tanh(scale · u / cap), kept for the derivative; logits beside it
                tanh = u.mul_(t.scale / t.softcap).tanh_()  # [n, V]
                z = torch.mul(tanh, t.softcap / t.temperature, out=capped[: h.shape[0]])
            gz = (
                z.zero_()
                if g_lse is None
                else z.sub_(lse[s : s + chunk, None]).exp_().mul_(g_lse[s : s + chunk, None])
            )  # [n, V] d loss / d logits
            if g_idx is not None:
                gz.scatter_add_(1, idx[s : s + chunk], g_idx[s : s + chunk].float())
            if t.scale != t.temperature:  # d logits / d u = (scale / T) · (1 − tanh²)
                gz.mul_(t.scale / t.temperature)
            if t.softcap is not None:
                gz.mul_(tanh.mul_(tanh).neg_().add_(1))
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
            None,
        )


def head_gather_lse(hidden, head, idx, chunk=1024, transform=PLAIN):
    """(logits at idx [N, k], logsumexp of the logits [N]), logits = transform(lm_head(hidden)):
    differentiable, chunked."""
    return HeadGatherLSE.apply(hidden, head.weight, head.bias, idx, chunk, transform)


@torch.no_grad()
def head_topk(hidden, head, k, chunk=1024, transform=PLAIN):
    """Top-k of the logits transform(lm_head(hidden)): values [N, k] fp32 and indices [N, k],
    chunked into one buffer, no graph."""
    N, V = hidden.shape[0], head.weight.shape[0]
    w, b = _matmul_weights(head.weight, head.bias, _amp_dtype(hidden.device.type))  # cast once
    buf = hidden.new_empty((min(N, chunk), V), dtype=torch.float32)
    k = min(k, V)
    values = hidden.new_empty((N, k), dtype=torch.float32)
    indices = torch.empty((N, k), dtype=torch.long, device=hidden.device)
    for s in range(0, N, chunk):
        z = _transform_(_logits_into(buf, hidden[s : s + chunk], w, b), transform)  # [n, V]
        torch.topk(z, k, -1, out=(values[s : s + chunk], indices[s : s + chunk]))
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
    # padding columns at position 0: no position beyond a real sequence's, which a RoPE whose
    # frequencies follow the longest position (dynamic NTK) would see
    c_pos = c_pos * c_attn  # [B, Lc]
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


def shares_prompts(model, max_seq_len=None):
    """Whether completion_hidden may forward each prompt once and continue its KV cache (exact),
    rather than forwarding every sequence whole. Not with gradient checkpointing (transformers
    turns the cache off in training forwards), nor when a layer's attention window (sliding or
    chunked: Mistral, Gemma 2/3, Qwen2 with use_sliding_window) could bind on the shared forward's
    columns: right-padded prompts then right-padded completions, up to 2 x max_seq_len of them
    (None: any window can bind). The whole-sequence forward is right-padded, so its columns are
    the positions of the real tokens and transformers' windows are exact there."""
    name = "is_activation_checkpointing"  # transformers >= 5; is_gradient_checkpointing before
    if getattr(model, name if hasattr(type(model), name) else "is_gradient_checkpointing"):
        return False
    window = attention_window(model)
    return window is None or (max_seq_len is not None and window >= 2 * max_seq_len)


def attention_window(model):
    """The smallest attention window of the model's layers (sliding or chunked attention), None
    when every layer attends to the whole sequence; 0 for a layer kind the shared-prompt forward
    does not know (linear attention, shared KV, ...), so that it is never shared. Read from the
    KV cache transformers builds for the config."""
    windows = []
    for layer in DynamicCache(config=model.config).layers:
        if type(layer) is DynamicSlidingWindowLayer:
            windows.append(layer.sliding_window)
        elif type(layer) is not DynamicLayer:
            windows.append(0)
    return min(windows, default=None)


def rope_length_limit(model):
    """The longest sequence whose RoPE frequencies do not depend on its length: dynamic NTK
    recomputes them past max_position_embeddings from the batch's longest position, longrope
    switches factors past original_max_position_embeddings. None when no layer does either."""
    limits = []
    for m in model.modules():
        kinds = getattr(m, "rope_type", None)
        if not isinstance(kinds, (str, dict)):
            continue
        for layer_type, kind in (kinds if isinstance(kinds, dict) else {None: kinds}).items():
            if "dynamic" in kind:
                limits.append(getattr(m, "original_max_seq_len", m.config.max_position_embeddings))
            elif kind == "longrope":
                params = m.config.rope_parameters
                params = params if layer_type is None else params[layer_type]
                limits.append(params["original_max_position_embeddings"])
    return min(limits, default=None)


class UnsupportedModelError(ValueError):
    """A model whose training forward this project cannot compute exactly: one line, at start-up."""


@torch.no_grad()
def check_training_support(model, max_seq_len, n_probe=8):
    """Before any step: refuse (UnsupportedModelError, one line) what the losses cannot compute
    exactly, and say what they compute differently. -> a one-line note for the console, or None.
    - RoPE whose frequencies follow the sequence length (dynamic NTK, longrope): exact while no
      sequence is longer than the original context; refused past it (a row's logits would depend
      on its batchmates).
    - The logits: the model's own logits on a short fixed input must equal logit_transform
      applied to lm_head(last hidden state) (what the losses compute); any other head is refused.
    - A sliding (or chunked) attention window that can bind: every sequence is forwarded whole,
      not on a shared prompt (shares_prompts)."""
    kind = model.config.get_text_config().model_type
    limit = rope_length_limit(model)
    if limit is not None and max_seq_len > limit:
        raise UnsupportedModelError(
            f"{kind}: its RoPE (dynamic NTK or longrope) changes its frequencies for sequences "
            f"longer than {limit} tokens, so a rollout's log-probabilities would depend on its "
            f"batchmates; pass --max-seq-len {limit} or less"
        )
    device, vocab = next(model.parameters()).device, model.get_output_embeddings().weight.shape[0]
    ids = (torch.arange(1, min(n_probe, max_seq_len) + 1, device=device) * 7919 % vocab)[None]
    t, was_training, error = logit_transform(model), model.training, ""
    model.eval()
    try:
        own = model(input_ids=ids, use_cache=False).logits[0].float()  # [n, V]
        h = model.base_model(input_ids=ids, use_cache=False).last_hidden_state[0]  # [n, H]
        head = model.get_output_embeddings()
        ours = _transform_(_logits_into(own.new_empty(own.shape), h, head.weight, head.bias), t)
        same = torch.allclose(ours, own, rtol=1e-4, atol=1e-4 * (1 + own.abs().max().item()))
    except Exception as e:  # a model whose decoder the losses cannot call as they do
        same, error = False, f" ({type(e).__name__}: {' '.join(str(e).split())[:200]})"
    finally:
        model.train(was_training)
    if not same:
        known = "lm_head(last hidden state)" + (f" x {t.scale:g}" if t.scale != 1 else "")
        known += f", soft-capped at {t.softcap:g}" if t.softcap is not None else ""
        raise UnsupportedModelError(
            f"{kind}: its logits are not {known}, what the losses compute "
            f"(forward.logit_transform); this output head is not supported{error}"
        )
    window = attention_window(model)
    if window is not None and window < 2 * max_seq_len:  # shares_prompts is False
        return (
            f"note: {kind} has an attention window of {window} tokens: every rollout is forwarded "
            "whole for the losses, not continuing a shared prompt"
        )
    return None
