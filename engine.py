"""The generation engine: batched sampling from a causal LM for rollouts, privileged rollouts and
validation (Algorithm 1, lines 1 and 4).

generate(model, tokenizer, prompts, num_samples, ...) -> one dict per (prompt, sample),
prompt-major: {"prompt_ids", "completion_ids", "text", "finished"}; completion_ids run up to and
including the first EOS, so pad == eos (Qwen's <|endoftext|>) is safe.
"""

import inspect

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import GenerationConfig, PreTrainedModel, StaticCache


class PromptTooLongError(ValueError):
    """A prompt that leaves no room for generation under max_seq_len."""


def eos_token_ids(tokenizer, model=None):
    """Token ids that end a completion: tokenizer.eos_token_id, the model's generation_config
    eos_token_id (int or list) and <|im_end|> when the tokenizer has it as a token. Order kept, no
    repeats."""
    ids = []

    def add(v):
        if v is None:
            return
        if isinstance(v, (list, tuple, set)):
            for x in v:
                add(x)
            return
        v = int(v)
        if v >= 0 and v not in ids:
            ids.append(v)

    add(getattr(tokenizer, "eos_token_id", None))
    if model is not None:
        gc = getattr(model, "generation_config", None)
        add(getattr(gc, "eos_token_id", None))
    try:
        vocab = tokenizer.get_vocab()
    except Exception:
        vocab = {}
    if "<|im_end|>" in vocab:
        add(vocab["<|im_end|>"])
    return ids


def _generation_config(greedy, temperature, max_new_tokens, pad_id, eos_ids):
    # Every sampling knob is explicit, and this config temporarily replaces model.generation_config
    # while
    # generating, so the checkpoint's generation_config.json (Qwen: top_k=20, top_p=0.8,
    # repetition_penalty=1.1, temperature 0.7) cannot fill in anything.
    return GenerationConfig(
        do_sample=not greedy,
        temperature=1.0 if greedy else float(temperature),
        top_k=0 if not greedy else None,
        top_p=1.0,
        min_p=None,
        typical_p=1.0,
        epsilon_cutoff=0.0,
        eta_cutoff=0.0,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        num_beams=1,
        num_return_sequences=1,
        min_new_tokens=None,
        min_length=0,
        max_new_tokens=int(max_new_tokens),
        pad_token_id=pad_id,
        eos_token_id=list(eos_ids),
        bos_token_id=None,
        use_cache=True,
        bad_words_ids=None,
        suppress_tokens=None,
        begin_suppress_tokens=None,
        forced_bos_token_id=None,
        forced_eos_token_id=None,
        renormalize_logits=False,
        return_dict_in_generate=False,
    )


def model_device(model):
    dev = getattr(model, "device", None)
    if dev is not None:
        return dev
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return "cpu"


def sample_categorical(logits, temperature=1.0, block=128):
    """One token id per row, drawn from softmax(logits / temperature) by inverse CDF with one
    uniform per row; logits [B, V] -> [B] long, and logits is overwritten (callers pass a buffer
    they own).

    Exact up to the fp32 rounding of the probabilities, as torch.multinomial: the cumulative sums
    are float64 and two-level (block sums, then within the chosen block), so no token's mass is lost
    to rounding in a 151,936-long running sum. One uniform per row instead of multinomial's one
    exponential per vocabulary
    entry: ~8x less work than torch.multinomial on CPU at Qwen's vocabulary."""
    p = logits.float()  # in place from here on
    if temperature != 1.0:
        p.div_(temperature)
    p = p.sub_(p.amax(-1, keepdim=True)).exp_()  # [B, V] unnormalised probabilities
    B, V = p.shape
    nb = -(-V // block)
    if nb * block != V:
        p = F.pad(p, (0, nb * block - V))  # zero mass: never drawn
    pb = p.view(B, nb, block)
    w = pb.sum(-1).double()  # [B, nb] block masses
    c = w.cumsum(-1)  # [B, nb]
    u = torch.rand(B, 1, dtype=torch.float64, device=p.device) * c[:, -1:]  # [B, 1] in [0, total)
    b = torch.searchsorted(c, u, right=True).clamp_max_(
        nb - 1
    )  # first block whose cumulative mass exceeds u
    u = (u - (c.gather(1, b) - w.gather(1, b))).clamp_min_(0)  # remainder inside block b
    inner = pb[torch.arange(B, device=p.device), b[:, 0]].double().cumsum(-1)  # [B, block]
    u = torch.minimum(
        u, inner[:, -1:] * (1 - 1e-12)
    )  # rounding guard: stay inside the block's mass
    j = torch.searchsorted(inner, u, right=True).clamp_max_(
        block - 1
    )  # first token whose cumulative mass exceeds u
    return (b[:, 0] * block + j[:, 0]).clamp_max_(V - 1)


def _plain_head(model):
    """The lm_head Linear when the logits are exactly lm_head(last hidden state) (Qwen2, Llama,
    Mistral, ...); None when the model scales or soft-caps them (Gemma 2, Cohere, Granite, ...):
    then the model is called."""
    cfg = (
        model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    )
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, torch.nn.Linear) or getattr(model, "base_model", model) is model:
        return None
    if any(
        getattr(cfg, k, None) not in (None, 1, 1.0)
        for k in (
            "final_logit_softcapping",
            "logit_scale",
            "logits_scaling",
            "lm_head_multiplier",
            "output_multiplier",
        )
    ):
        return None
    return head


def _decode(model, input_ids, attention_mask, max_new_tokens, greedy, temperature, eos_ids, pad_id):
    """Prefill, then one forward per new token on a static KV cache: what generate does, without its
    per-step logits processors and copies. The next-token logits go into one buffer reused at every
    step (nothing vocabulary-sized is allocated per token). input_ids, attention_mask [B, W]
    left-padded -> [B, <= max_new_tokens] token ids, pad_id after a row's first EOS; stops once
    every row has ended."""
    B, W = input_ids.shape
    device = input_ids.device
    try:  # transformers >= 4.56: sized from the first update
        cache = StaticCache(config=model.config, max_cache_len=W + max_new_tokens)
    except TypeError:  # older: batch size, device and dtype up front
        cache = StaticCache(
            config=model.config,
            max_batch_size=B,
            max_cache_len=W + max_new_tokens,
            device=device,
            dtype=next(model.parameters()).dtype,
        )
    cache_kw = (
        "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    )
    head = _plain_head(model)
    buf = None

    def next_logits(**kw):  # [B, V] logits of the last position
        nonlocal buf
        if head is None or torch.is_autocast_enabled(device.type):
            return model(**kw, use_cache=True, logits_to_keep=1).logits[:, -1]
        h = model.base_model(**kw, use_cache=True).last_hidden_state[:, -1]  # [B, H]
        if h.dtype != head.weight.dtype:
            return head(h)
        if buf is None:
            buf = h.new_empty((B, head.weight.shape[0]))
        return (
            torch.mm(h, head.weight.t(), out=buf)
            if head.bias is None
            else torch.addmm(head.bias, h, head.weight.t(), out=buf)
        )

    attn = torch.cat(
        [attention_mask, attention_mask.new_ones(B, max_new_tokens)], 1
    )  # [B, W + new]
    pos = (attention_mask.cumsum(-1) - 1).clamp_min_(0)  # [B, W] positions of the left-padded rows
    logits = next_logits(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=pos, **{cache_kw: cache}
    )
    pos = pos[:, -1:]
    eos = torch.tensor(list(eos_ids), device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    toks = []
    for t in range(max_new_tokens):
        nxt = logits.argmax(-1) if greedy else sample_categorical(logits, temperature)  # [B]
        nxt = nxt.masked_fill(done, pad_id)
        toks.append(nxt)
        done |= torch.isin(nxt, eos)
        if t == max_new_tokens - 1 or bool(done.all()):
            break
        pos = pos + 1
        logits = next_logits(
            input_ids=nxt[:, None],
            attention_mask=attn[:, : W + t + 1],
            position_ids=pos,
            **{cache_kw: cache},
        )
    return torch.stack(toks, 1)


def generate(
    model,
    tokenizer,
    prompts,
    num_samples=1,
    temperature=1.0,
    max_new_tokens=512,
    batch_size=64,
    max_seq_len=None,
    greedy=False,
    eos_ids=None,
    progress=False,
    desc="generate",
):
    """Generate num_samples completions for each already-formatted prompt string.

    Returns len(prompts) * num_samples dicts in prompt-major order (prompt 0's samples first):
    {"prompt_ids", "completion_ids", "text", "finished"}. completion_ids run up to and including the
    first token in eos_ids (finished=True), or are every generated token when none came
    (finished=False); nothing after the first EOS is kept, so pad == eos (Qwen's <|endoftext|>) is
    safe.

    Sequences (prompt x sample) are packed into batches of at most batch_size, longest prompts
    first, left-padded, with the KV cache. Sampling draws from torch's global RNG. With max_seq_len,
    each batch generates at most max_seq_len - (its longest prompt) tokens.
    """
    if num_samples < 0 or batch_size < 1 or max_new_tokens < 1:
        raise ValueError(
            f"generate: need num_samples >= 0, batch_size >= 1, max_new_tokens >= 1 "
            f"(got {num_samples}, {batch_size}, {max_new_tokens})"
        )
    if not greedy and not temperature > 0:
        raise ValueError(
            f"generate: temperature must be > 0 for sampling (got {temperature}); use greedy=True"
        )
    prompts = list(prompts)
    if not prompts or num_samples == 0:
        return []
    eos_ids = list(eos_ids) if eos_ids is not None else eos_token_ids(tokenizer, model)
    if not eos_ids:
        raise ValueError(
            "generate: no EOS token id (tokenizer and model define none); pass eos_ids"
        )
    eos_set = set(eos_ids)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]

    encoded = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    for i, ids in enumerate(encoded):
        if not ids:
            raise ValueError(f"generate: prompt {i} is empty")
        if max_seq_len is not None and len(ids) >= max_seq_len:
            raise PromptTooLongError(
                f"prompt {i} is {len(ids)} tokens, which leaves no room to generate under "
                f"max_seq_len={max_seq_len} "
                f"(starts: {prompts[i][:60]!r})"
            )

    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))  # stable; longest first
    jobs = [(i, s) for i in order for s in range(num_samples)]
    batches = [jobs[b : b + batch_size] for b in range(0, len(jobs), batch_size)]
    results = [None] * (len(prompts) * num_samples)
    device = model_device(model)

    own_loop = isinstance(model, PreTrainedModel)
    was_training = getattr(model, "training", False)
    has_gc = hasattr(model, "generation_config")
    saved_gc = getattr(model, "generation_config", None)
    model.eval()
    try:
        with torch.no_grad():
            for batch in tqdm(
                batches, desc=desc, disable=not progress, unit="batch", dynamic_ncols=True
            ):
                width = max(len(encoded[i]) for i, _ in batch)
                new = (
                    max_new_tokens
                    if max_seq_len is None
                    else min(max_new_tokens, max_seq_len - width)
                )
                input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
                attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, (i, _) in enumerate(batch):
                    ids = encoded[i]
                    input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
                    attention_mask[row, width - len(ids) :] = 1
                if (
                    own_loop
                ):  # a transformers model: our decode loop (same tokens as generate for greedy)
                    gen = _decode(
                        model,
                        input_ids.to(device),
                        attention_mask.to(device),
                        new,
                        greedy,
                        temperature,
                        eos_ids,
                        pad_id,
                    ).tolist()
                else:  # anything else with a generate() (e.g. a stand-in in tests)
                    gen_config = _generation_config(greedy, temperature, new, pad_id, eos_ids)
                    # so that nothing from the checkpoint's generation_config.json fills in unset
                    # fields
                    if has_gc:
                        model.generation_config = gen_config
                    out = model.generate(
                        input_ids=input_ids.to(device),
                        attention_mask=attention_mask.to(device),
                        generation_config=gen_config,
                    )
                    gen = out[:, width:].tolist()
                for row, (i, s) in enumerate(batch):
                    toks = gen[row]
                    cut = next((t for t, tok in enumerate(toks) if tok in eos_set), None)
                    completion = toks if cut is None else toks[: cut + 1]
                    results[i * num_samples + s] = {
                        "prompt_ids": list(encoded[i]),
                        "completion_ids": completion,
                        "text": tokenizer.decode(completion, skip_special_tokens=True),
                        "finished": cut is not None,
                    }
    finally:
        if has_gc:
            model.generation_config = saved_gc
        model.train(was_training)
    return results
