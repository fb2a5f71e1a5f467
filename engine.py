"""The generation engine: sampling from a causal LM for rollouts, privileged rollouts and
validation (Algorithm 1, lines 1 and 4).

    generate(model, tokenizer, prompts, num_samples, ...) -> one dict per (prompt, sample),
    prompt-major: {"prompt_ids", "completion_ids", "text", "finished", "entropy"}

completion_ids run up to and including the first EOS, so pad == eos (Qwen's <|endoftext|>) is safe.

How it runs (continuous batching on a dense KV cache, so that the cost follows the tokens
generated, not the caps):
- The sequences (prompt x sample) wait in a queue, in order. Up to batch_size of them decode
  together, one forward per token for all of them. A sequence that ends (its first EOS, or its
  own cap) leaves the batch at once and the next waiting one takes its row: no row waits for the
  slowest and no finished row is computed again.
- Each distinct prompt is forwarded once per call (prefill); its samples copy its KV cache.
- The KV cache (_Cache) has one row per decoding sequence, right-aligned: every row's newest
  token is in the same column, so one forward appends one column for all rows. Attention reads
  only the columns of the longest live row, and the buffer is grown in chunks as rows grow, so a
  cap of 4,096 costs nothing until a sequence is that long.
- Each sequence generates at most min(max_new_tokens, max_seq_len - its own prompt length)
  tokens, whatever it is batched with.
- Greedy takes the argmax, as transformers' generate does; sampling draws exactly from
  softmax(logits / T) (sample_categorical), which also gives the entropy of that distribution.
- On CUDA, a model whose weights are fp32 (hdpo.py's master weights) generates from a bf16 copy
  (_generation_model), refreshed from the policy at every call; the KV cache is then bf16 too.
  On CPU the model itself generates, in fp32, its Linear layers running from weights prepacked
  for oneDNN for the call (_packed_linears): decoding a few rows per weight is where the plain
  CPU matmul is slowest (the plain rollouts of a SmolLM2 step: 11-14 s against 15 s).

A vLLM backend would be a second function with generate's signature and result dicts: prompt
token ids in; completion ids, text, finished and entropy out; its weights reloaded from the
policy where _generation_model refreshes the bf16 copy.
"""

import contextlib
import copy
import functools
import inspect
import platform
import weakref
from collections import deque

import torch
from tqdm.auto import tqdm


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


def model_device(model):
    dev = getattr(model, "device", None)
    if dev is not None:
        return dev
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return "cpu"


# ----------------------------------------------------------------------------------------------
# Picking the next token


def sample_categorical(logits, temperature=1.0, block=128):
    """One token per row drawn from softmax(logits / temperature), and that distribution's entropy.
    logits [B, V] -> (tokens [B] long, entropy [B] float64, nats). An fp32 logits tensor is
    overwritten (callers pass a buffer they own).

    Inverse CDF with one uniform per row: exact up to the fp32 rounding of the probabilities, as
    torch.multinomial, whose one exponential per vocabulary entry costs ~8x more on CPU at Qwen's
    vocabulary. The cumulative sums are float64 and two-level (block sums, then within the chosen
    block), so no token's mass is lost to rounding in a 151,936-long running sum. The entropy is
    log Σp − Σ p·y / Σp with y = logits/T − max and p = exp(y): one more pass over [B, V] (and
    p is a second [B, V] buffer rather than y overwritten)."""
    y = logits.float()  # [B, V], in place from here on when logits is fp32
    if temperature != 1.0:
        y.div_(temperature)
    y.sub_(y.amax(-1, keepdim=True))  # [B, V] log of the unnormalised probabilities, <= 0
    p = torch.exp(y)  # [B, V] unnormalised probabilities
    B, V = p.shape
    nb = -(-V // block)
    if nb * block != V:  # zero mass (and y = 0, so p·y = 0) in the padding: never drawn
        p, y = (torch.nn.functional.pad(t, (0, nb * block - V)) for t in (p, y))
    pb = p.view(B, nb, block)  # [B, nb, block]
    w = pb.sum(-1).double()  # [B, nb] block masses
    c = w.cumsum(-1)  # [B, nb]
    total = c[:, -1]  # [B] Σp
    # Σ p·y per block (fp32 over 128 terms), then float64 over blocks: a single fp32 dot over
    # 151,936 terms would be off by ~1e-4 relative
    p_dot_y = torch.bmm(p.view(B * nb, 1, block), y.view(B * nb, block, 1))  # [B * nb, 1, 1]
    entropy = total.log() - p_dot_y.view(B, nb).double().sum(-1) / total  # [B] nats
    u = torch.rand(B, 1, dtype=torch.float64, device=p.device) * c[:, -1:]  # [B, 1] in [0, Σp)
    b = torch.searchsorted(c, u, right=True).clamp_max_(nb - 1)  # [B, 1] block holding u
    u = (u - (c.gather(1, b) - w.gather(1, b))).clamp_min_(0)  # [B, 1] remainder inside block b
    inner = pb[torch.arange(B, device=p.device), b[:, 0]].double().cumsum(-1)  # [B, block]
    u = torch.minimum(u, inner[:, -1:] * (1 - 1e-12))  # rounding guard: stay inside the block
    j = torch.searchsorted(inner, u, right=True).clamp_max_(block - 1)  # [B, 1] token in block
    return (b[:, 0] * block + j[:, 0]).clamp_max_(V - 1), entropy


# ----------------------------------------------------------------------------------------------
# The model that generates: the policy itself, or its bf16 copy on CUDA

_COPIES = weakref.WeakKeyDictionary()  # model -> its copy in another dtype


def _generation_model(model, dtype=None):
    """The module generation runs. dtype None: bf16 when model is on CUDA with fp32 weights,
    else model itself (CPU: fp32, as trained). For another dtype, a copy of model whose
    parameters are in that dtype (buffers, such as RoPE's inverse frequencies, stay as they are:
    model.to(bf16) would round them), made once, kept beside the model, and refreshed from it at
    every call: one cast-copy of the weights per generate() (~2 ms on a GPU at 1.5B), so the copy
    can never be stale and hdpo.py needs no refresh call after its optimiser step. (A parameter's
    in-place version counter would say when the weights changed, but fused AdamW does not bump
    it: tested.)

    Why a copy rather than autocast: under bf16 autocast every decode step casts the fp32 weights
    again, and RoPE's fp32 cos/sin make the cached keys fp32 while values are bf16. Why not bf16
    weights with fp32 master weights in the optimiser: the training update would change. The copy
    costs 2 bytes per parameter (3 GB at 1.5B)."""
    params = list(model.parameters())
    if dtype is None:
        cuda = model_device(model).type == "cuda"
        dtype = torch.bfloat16 if cuda and params and params[0].dtype == torch.float32 else None
    if dtype is None or all(p.dtype == dtype for p in params):
        return model
    gen = _COPIES.get(model)
    if gen is None or next(gen.parameters()).dtype != dtype:
        # deepcopy with each parameter pre-mapped to its cast: no second full-precision copy,
        # tied weights stay tied, gradients are not copied
        memo = {id(p): torch.nn.Parameter(p.detach().to(dtype), False) for p in params}
        gen = _COPIES[model] = copy.deepcopy(model, memo).eval()
    else:
        with torch.no_grad():
            for g, p in zip(gen.parameters(), params):
                g.copy_(p)
    return gen


def packing_available():
    """Whether _packed_linears packs on this machine: x86 (where it was measured, AVX2) and a torch
    built with oneDNN's linear ops."""
    return (
        platform.machine().lower() in ("x86_64", "amd64")
        and torch.backends.mkldnn.is_available()
        and all(
            hasattr(torch.ops.mkldnn, f) for f in ("_reorder_linear_weight", "_linear_pointwise")
        )
    )


def _linear_packed(packed, bias, x):
    """nn.Linear's forward from a weight prepacked for oneDNN (see _packed_linears)."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


@contextlib.contextmanager
def _packed_linears(model, rows):
    """On CPU with fp32 weights: for one generate() call, every nn.Linear of model (the lm_head
    too) runs from a copy of its weight laid out ahead of time for oneDNN's matmul, reordered for
    `rows` rows. Decoding multiplies a few rows by every weight at every step, the case where
    the plain matmul is slowest: at SmolLM2-135M's shapes and 32 rows, on 2 AVX2 cores, the 30
    layers' matmuls took 73 ms against 94 ms and the 49,152-wide head 16 ms against 38-43 ms
    (the reorder: ~0.4 s per call, once). The same products up to fp32 rounding (~1e-4 on
    outputs of size ~25: another summation order). The copies (one per weight, 4 bytes per
    parameter) live for the call only and are made from the current weights, so they are never
    stale. Elsewhere (CUDA, bf16, not x86, a build without oneDNN) the model runs as it is."""
    params = list(model.parameters())
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    cpu_fp32 = params[0].device.type == "cpu" and all(p.dtype == torch.float32 for p in params)
    if not (linears and cpu_fp32 and packing_available()):
        yield
        return
    try:
        packs = {m: torch.ops.mkldnn._reorder_linear_weight(m.weight.detach(), rows)
                 for m in linears}  # fmt: skip
    except RuntimeError:  # a oneDNN build that cannot reorder here: the plain matmul
        yield
        return
    for m, packed in packs.items():  # an instance attribute shadows nn.Linear.forward
        m.forward = functools.partial(_linear_packed, packed, m.bias)
    try:
        yield
    finally:
        for m in packs:
            del m.forward


# ----------------------------------------------------------------------------------------------
# The KV cache of the decoding rows


class _Cache:
    """Keys and values of the sequences decoding together, in the shape transformers' attention
    layers call: update(k, v, layer) -> (all keys, all values) for the attention.

    Per layer, k[l] and v[l] are [rows, kv_heads, cols, head_dim]. Live rows are 0..B-1; row r
    holds lens[r] tokens in columns [end - lens[r], end) (right-aligned, so one decode step writes
    column `end` of every row). A decode step's attention sees the last max(lens) + 1 columns;
    the row's 4D mask hides the columns before its own tokens (stale or zero). Columns are added
    in chunks when `end` reaches the buffer's width; each repack also drops the columns no live
    row needs any more. While `prefill` is a dict, update() only collects a prompt group's keys
    and values (their attention is within the group).
    """

    def __init__(self, rows, chunk):
        self.rows, self.chunk = rows, chunk
        self.k, self.v = [], []  # per layer [rows, kv_heads, cols, head_dim], made at first insert
        self.lens = []  # tokens held by each live row
        self.end = self.cols = 0  # next column to write; buffer width
        self.width = 0  # columns the current decode step's attention reads
        self.prefill = None  # {layer: (k, v)} while a prompt group is forwarded

    def update(self, k, v, layer, *args, **kwargs):
        if self.prefill is not None:
            self.prefill[layer] = (k, v)  # [n, kv_heads, P, head_dim]
            return k, v
        B, end = len(self.lens), self.end
        self.k[layer][:B, :, end] = k[:, :, 0]  # [B, kv_heads, head_dim]
        self.v[layer][:B, :, end] = v[:, :, 0]
        lo = end + 1 - self.width
        return self.k[layer][:B, :, lo : end + 1], self.v[layer][:B, :, lo : end + 1]

    def get_seq_length(self, layer=0):  # asked by some transformers versions; positions are given
        return self.end

    def make_room(self, prompt_len=0):
        """Ensure a prompt of prompt_len tokens fits in columns [end - prompt_len, end) and that
        column `end` exists for the next decode step; repack (new buffer, live columns copied,
        layer by layer) when not."""
        if self.end >= prompt_len and self.end < self.cols:
            return
        live = max(self.lens, default=0)
        new_end = max(live, prompt_len)
        new_cols = new_end + self.chunk
        for bufs in (self.k, self.v):
            for i, old in enumerate(bufs):
                new = old.new_zeros(self.rows, old.shape[1], new_cols, old.shape[3])
                new[: len(self.lens), :, new_end - live : new_end] = old[
                    : len(self.lens), :, self.end - live : self.end
                ]
                bufs[i] = new  # the old layer is freed before the next is allocated
        self.end, self.cols = new_end, new_cols

    def insert(self, kv, lo, hi, p):
        """Rows lo..hi-1 take a prompt of p tokens whose keys/values per layer are kv[l] =
        (k, v) [kv_heads, p, head_dim] (the same prompt for every row: its samples)."""
        if not self.k:  # first prompt: now the heads, head_dim, dtype and device are known
            for k, v in kv:
                shape = (self.rows, k.shape[0], self.cols, k.shape[2])
                self.k.append(k.new_zeros(shape))
                self.v.append(v.new_zeros(shape))
        for (k, v), K, V in zip(kv, self.k, self.v):
            K[lo:hi, :, self.end - p : self.end] = k  # broadcast over the rows
            V[lo:hi, :, self.end - p : self.end] = v
        self.lens[lo:hi] = [p] * (hi - lo)

    def drop(self, done):
        """Remove the rows in `done` (sorted): the last live rows move into the holes, so only
        len(done) rows are copied. -> order: new row n was old row order[n]."""
        B, Bn = len(self.lens), len(self.lens) - len(done)
        gone = set(done)
        holes = [r for r in done if r < Bn]
        movers = [r for r in range(Bn, B) if r not in gone]
        order = list(range(Bn))
        if holes:
            lo = self.end - max(self.lens[r] for r in movers)
            dst = torch.tensor(holes, device=self.k[0].device)
            src = torch.tensor(movers, device=self.k[0].device)
            for buf in self.k + self.v:
                buf[dst, :, lo : self.end] = buf[src, :, lo : self.end]
            for h, m in zip(holes, movers):
                self.lens[h], order[h] = self.lens[m], m
        del self.lens[Bn:]
        return order


# ----------------------------------------------------------------------------------------------
# One forward: prompt groups (prefill) and decode steps


def _plain_head(model):
    """The lm_head Linear when the logits are exactly lm_head(last hidden state) (Qwen2, Llama,
    Mistral, ...); None when the model scales or soft-caps them (Gemma 2, Cohere, Granite, ...):
    then the model itself is called for its last-position logits."""
    cfg = (
        model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    )
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, torch.nn.Linear) or getattr(model, "base_model", model) is model:
        return None
    scaled = ("final_logit_softcapping", "logit_scale", "logits_scaling", "lm_head_multiplier")
    if any(getattr(cfg, k, None) not in (None, 1, 1.0) for k in scaled + ("output_multiplier",)):
        return None
    return head


def _attention_mask(allowed, model):
    """[n, 1, q, kv] bool (True: may attend) in the form the model's attention takes it: sdpa
    takes the bool mask, eager an additive one. transformers returns a 4D mask as given."""
    impl = getattr(model.config, "_attn_implementation", None) or "eager"
    if impl == "sdpa":
        return allowed
    if impl == "eager":
        dtype = next(model.parameters()).dtype
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(
            ~allowed, torch.finfo(dtype).min
        )
    raise ValueError(
        f"engine: attention implementation {impl!r} is not supported (sdpa or eager); load the "
        "model with attn_implementation='sdpa'"
    )


def _forward(model, head, cache, input_ids, position_ids, allowed, out):
    """One forward of input_ids [n, q] at position_ids [n, q] through the cache; the logits of
    every row's last position go into out [n, V] (no vocabulary-sized tensor per step when the
    head is plain)."""
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    kw = {name: cache}
    kw.update(input_ids=input_ids, position_ids=position_ids, use_cache=True)
    kw["attention_mask"] = _attention_mask(allowed, model)
    if head is None:
        out.copy_(model(**kw, logits_to_keep=1).logits[:, -1])
        return
    h = model.base_model(**kw).last_hidden_state[:, -1]  # [n, H]
    if "forward" in vars(head):  # a packed weight (_packed_linears)
        out.copy_(head(h))
    elif head.bias is None:
        torch.mm(h, head.weight.t(), out=out)  # [n, V]
    else:
        torch.addmm(head.bias, h, head.weight.t(), out=out)


def _prefill(model, head, cache, prompts, pad_id):
    """Forward a group of prompts (lists of token ids), left-padded to the longest. -> per prompt
    ([(k, v) per layer, each [kv_heads, p, head_dim]], next-token logits [V])."""
    device = model_device(model)
    P = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (P - len(p)) + list(p) for p in prompts], device=device)
    lens = torch.tensor([len(p) for p in prompts], device=device)  # [n]
    cols = torch.arange(P, device=device)
    real = cols[None, :] >= (P - lens)[:, None]  # [n, P] not padding
    pos = (real.long().cumsum(-1) - 1).clamp_min_(0)  # [n, P] positions as transformers gives
    causal = cols[None, :] <= cols[:, None]  # [P, P]
    # a padding query attends only to itself, so no row is fully masked (no NaN in the cache)
    allowed = (causal & real[:, None, :]) | torch.eye(P, dtype=torch.bool, device=device)
    V = head.weight.shape[0] if head is not None else model.config.get_text_config().vocab_size
    dtype = next(model.parameters()).dtype
    logits = torch.empty(len(prompts), V, device=device, dtype=dtype)  # [n, V]
    cache.prefill = {}
    try:
        _forward(model, head, cache, ids, pos, allowed[:, None], logits)
        kv = [cache.prefill[layer] for layer in sorted(cache.prefill)]
    finally:
        cache.prefill = None
    return [
        ([(k[i, :, P - len(p) :], v[i, :, P - len(p) :]) for k, v in kv], logits[i])
        for i, p in enumerate(prompts)
    ]


# ----------------------------------------------------------------------------------------------
# The decode loop


def _groups(items, lengths, budget):
    """Consecutive items in groups of padded size (count x longest) <= budget (>= 1 item each)."""
    groups, longest = [], 0
    for item, n in zip(items, lengths):
        if groups and (len(groups[-1]) + 1) * max(longest, n) <= budget:
            groups[-1].append(item)
            longest = max(longest, n)
        else:
            groups.append([item])
            longest = n
    return groups


def _decode(model, prompts, num_samples, caps, batch_size, greedy, temperature, eos_ids, pad_id,
            chunk=256, prefill_tokens=16384, bar=None):  # fmt: skip
    """Continuous batching over the sequences (prompt i, sample s), in prompt-major order.
    prompts: token-id lists; caps[i]: new tokens allowed to prompt i's samples. chunk: KV
    columns added at a time; prefill_tokens: padded prompt tokens per prefill forward.
    -> (per sequence (tokens, finished, entropy sum or None), stats)."""
    device = model_device(model)
    head, eos = _plain_head(model), set(eos_ids)
    n = len(prompts) * num_samples
    cache = _Cache(rows=min(batch_size, n), chunk=min(chunk, max(caps)))
    waiting = deque(range(n))  # sequence j: prompt j // num_samples
    rows = []  # the sequence in each live row of the cache
    tokens, entropy = [[] for _ in range(n)], [0.0] * n
    finished = [False] * n
    stored = {}  # prompt -> its prefill, kept while some of its samples wait
    buf = None  # [rows, V] next-token logits of the live rows
    stats = {"decode_steps": 0, "row_steps": 0, "prefill_tokens": 0, "peak_cols": 0}
    while waiting or rows:
        # 1. admit waiting sequences into the free rows (prefill the prompts not yet forwarded)
        new = [waiting.popleft() for _ in range(min(len(waiting), cache.rows - len(rows)))]
        todo = list(dict.fromkeys(j // num_samples for j in new if j // num_samples not in stored))
        for group in _groups(todo, [len(prompts[i]) for i in todo], prefill_tokens):
            kv_logits = _prefill(model, head, cache, [prompts[i] for i in group], pad_id)
            stored.update(zip(group, kv_logits))
            stats["prefill_tokens"] += sum(len(prompts[i]) for i in group)
        if new:
            cache.make_room(max(len(prompts[j // num_samples]) for j in new))
        for j in new:  # consecutive samples of a prompt could be one insert; rows are few
            i, r = j // num_samples, len(rows)
            kv, logits = stored[i]
            if buf is None:
                buf = logits.new_empty(cache.rows, logits.shape[-1])
            cache.insert(kv, r, r + 1, len(prompts[i]))
            buf[r] = logits
            rows.append(j)
            if j % num_samples == num_samples - 1:  # its last sample: the prefill is not needed
                del stored[i]
        B = len(rows)
        # 2. pick every live row's next token
        if greedy:
            nxt, h = buf[:B].argmax(-1).tolist(), None  # [B]
        else:
            nxt, h = sample_categorical(buf[:B], temperature)
            nxt, h = nxt.tolist(), h.tolist()
        # 3. rows whose sequence ended (EOS, kept in the completion, or its cap) leave the batch
        done = []
        for r, j in enumerate(rows):
            tokens[j].append(nxt[r])
            if h is not None:
                entropy[j] += h[r]
            finished[j] = nxt[r] in eos
            if finished[j] or len(tokens[j]) >= caps[j // num_samples]:
                done.append(r)
        if done:
            order = cache.drop(done)
            rows = [rows[r] for r in order]
            if bar is not None:
                bar.update(len(done))
        if not rows:
            continue
        # 4. one forward for the live rows: each feeds its last token at its own position
        cache.make_room()
        lens = torch.tensor(cache.lens, device=device)  # [B] tokens before the new one
        cache.width = max(cache.lens) + 1
        allowed = torch.arange(cache.width, device=device) >= (cache.width - 1 - lens)[:, None]
        ids = torch.tensor([tokens[j][-1] for j in rows], device=device)[:, None]  # [B, 1]
        _forward(model, head, cache, ids, lens[:, None], allowed[:, None, None], buf[: len(rows)])
        cache.end += 1
        cache.lens = [x + 1 for x in cache.lens]
        stats["decode_steps"] += 1
        stats["row_steps"] += len(rows)
        stats["peak_cols"] = max(stats["peak_cols"], cache.cols)
    return [(tokens[j], finished[j], None if greedy else entropy[j]) for j in range(n)], stats


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
    stats=None,
):
    """Generate num_samples completions for each already-formatted prompt string.

    Returns len(prompts) * num_samples dicts in prompt-major order (prompt 0's samples first):
    {"prompt_ids", "completion_ids", "text", "finished", "entropy"}. completion_ids run up to and
    including the first token in eos_ids (finished=True), or are every generated token when none
    came (finished=False); nothing after the first EOS is kept. entropy: for sampled completions,
    the sum over the completion's tokens of the entropy (nats) of softmax(logits / temperature),
    the distribution each token was drawn from; None for greedy ones.

    Each sequence generates at most min(max_new_tokens, max_seq_len - its prompt length) tokens.
    batch_size: sequences decoding together (the KV cache holds batch_size rows, as long as the
    longest live row). Sampling draws from torch's global RNG: reproducible for a seed, but not
    the same draws as transformers' generate. stats: a dict to receive decode_steps, row_steps
    (rows computed, summed over steps), prefill_tokens and peak_cols (KV buffer width).
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
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]

    encoded = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    for i, ids in enumerate(encoded):
        if not ids:
            raise ValueError(f"generate: prompt {i} is empty")
        if max_seq_len is not None and len(ids) >= max_seq_len:
            raise PromptTooLongError(
                f"prompt {i} is {len(ids)} tokens, which leaves no room to generate under "
                f"max_seq_len={max_seq_len} (starts: {prompts[i][:60]!r})"
            )
    caps = [
        max_new_tokens if max_seq_len is None else min(max_new_tokens, max_seq_len - len(ids))
        for ids in encoded
    ]

    was_training = model.training
    gen_model = _generation_model(model)
    model.eval()
    total = len(prompts) * num_samples
    try:
        # the generating model runs in its own dtype: autocast (hdpo.py's amp) is switched off
        with (
            torch.no_grad(),
            torch.autocast(model_device(gen_model).type, enabled=False),
            tqdm(total=total, desc=desc, disable=not progress, dynamic_ncols=True) as bar,
            _packed_linears(gen_model, min(batch_size, total)),
        ):
            outs, run_stats = _decode(
                gen_model, encoded, num_samples, caps, batch_size, greedy, temperature, eos_ids,
                pad_id, bar=bar,
            )  # fmt: skip
    finally:
        model.train(was_training)
    if stats is not None:
        stats.update(run_stats)
    return [
        {
            "prompt_ids": list(encoded[j // num_samples]),
            "completion_ids": toks,
            "text": tokenizer.decode(toks, skip_special_tokens=True),
            "finished": fin,
            "entropy": ent,
        }
        for j, (toks, fin, ent) in enumerate(outs)
    ]
