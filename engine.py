"""The generation engine: sampling from a causal LM for rollouts, privileged rollouts and
validation (Algorithm 1, lines 1 and 4).

    generate(model, tokenizer, prompts, num_samples, ...) -> one dict per (prompt, sample),
    prompt-major: {"prompt_ids", "completion_ids", "text", "finished", "entropy"}

completion_ids run up to and including the first EOS, so pad == eos (Qwen's <|endoftext|>) is safe.

How it runs (continuous batching on a dense KV cache, so that the cost follows the tokens
generated, not the caps; docs/engine.md has the design and the measurements):
- The sequences (prompt x sample) wait in a queue, in order. Up to batch_size of them decode
  together, one forward per token for all of them. A sequence that ends (its first EOS, or its
  own cap) leaves the batch and the next waiting one takes its row: no row waits for the
  slowest.
- Each distinct prompt is forwarded once per call (prefill, prompts in groups); its samples copy
  its KV cache, one copy per layer for a whole group of rows.
- A decode step needs nothing from the host: the token choice, the EOS and cap checks, the
  positions and masks are device tensors updated in place (_Cache, _decode). The host reads
  which rows finished every few steps (SYNC_EVERY: 8 on CUDA, every step on CPU), so the
  GPU does not wait for Python between tokens. On CUDA each step of a given (rows, width) shape
  is one CUDA graph (_Graphs); on CPU the model runs eagerly (torch.compile was measured slower
  there, docs/engine.md).
- Attention reads each row's own columns, up to the longest live row's, grouped-query heads
  without copies (_sdpa_attention); a sliding window (Mistral, Qwen2, Gemma 2) is in the masks,
  per layer type. What the engine cannot compute exactly is refused in one line
  (check_generation_support): RoPE that rescales with the batch's longest position (dynamic NTK,
  longrope) past the original context.
- Each sequence generates at most min(max_new_tokens, max_seq_len - its own prompt length)
  tokens, whatever it is batched with.
- Greedy takes the argmax, as transformers' generate does; sampling draws exactly from
  softmax(logits / T) (sample_categorical), which also gives the entropy of that distribution.
- On CUDA, a model whose weights are fp32 (hdpo.py's master weights) generates from a bf16 copy
  (_generation_model), refreshed from the policy at every call; the KV cache is then bf16 too,
  and plan_generation sizes the rows to the card. On CPU the model itself generates, in fp32,
  its Linear layers running from weights prepacked for oneDNN for the call (_packed_linears).

A vLLM backend would be a second function with generate's signature and result dicts: prompt
token ids in; completion ids, text, finished and entropy out; its weights reloaded from the
policy where _generation_model refreshes the bf16 copy.
"""

import contextlib
import copy
import functools
import inspect
import platform
import warnings
import weakref
from collections import deque

import torch
from tqdm.auto import tqdm
from transformers import AttentionInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from forward import UnsupportedModelError, rope_length_limit


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
# What the engine supports: attention masks per layer type, RoPE, the memory it plans


def _attention_layout(model):
    """How the engine masks attention for this model, checked: -> (impl, window, per_type).
    impl: "sdpa" (run as _sdpa_attention) or "eager" (the model's own, with additive masks);
    window: the sliding attention window in tokens (None: every layer attends to everything);
    per_type: the masks go as {"full_attention": m, "sliding_attention": m_window}, the form in
    which models with layer_types (Qwen2, Gemma 2/3) take one mask per kind of layer; without
    layer_types a window applies to every layer (Mistral, Phi-3) and one mask is passed.
    transformers uses a 4D mask as given, so a window the engine did not put in its mask would
    not apply: what it cannot mask exactly is refused (UnsupportedModelError)."""
    cfg = model.config.get_text_config()
    kind = cfg.model_type
    impl = getattr(cfg, "_attn_implementation", None) or "eager"
    impl = "sdpa" if impl == _SDPA else impl  # inside a generate() call (_engine_attention)
    if impl not in ("sdpa", "eager"):
        raise UnsupportedModelError(
            f"engine: {kind} uses attention implementation {impl!r}; the engine runs 'sdpa' or "
            "'eager' (load the model with attn_implementation='sdpa')"
        )
    if getattr(cfg, "attention_chunk_size", None):
        raise UnsupportedModelError(f"engine: {kind} has chunked attention, not supported")
    window = getattr(cfg, "sliding_window", None)
    types = getattr(cfg, "layer_types", None)
    if types is not None:
        unknown = sorted(set(types) - {"full_attention", "sliding_attention"})
        if unknown:
            raise UnsupportedModelError(
                f"engine: {kind} has {', '.join(unknown)} layers, which the engine cannot mask"
            )
        window = window if "sliding_attention" in types else None
    elif getattr(cfg, "use_sliding_window", True) is False:
        window = None
    return impl, window, types is not None and window is not None


def check_generation_support(model, longest):
    """Refuse (UnsupportedModelError, one line) what the engine cannot generate exactly for
    sequences of up to `longest` tokens (prompt + completion): an attention it cannot mask
    (_attention_layout), and RoPE whose frequencies follow the batch's longest position (dynamic
    NTK, longrope) past the original context, where a row's output would depend on its
    batchmates. Within it every row is computed as alone."""
    _attention_layout(model)
    limit = rope_length_limit(model)
    if limit is not None and longest > limit:
        kind = model.config.get_text_config().model_type
        raise UnsupportedModelError(
            f"engine: {kind} has RoPE scaling (dynamic NTK or longrope) that changes past "
            f"{limit} tokens, and this generation reaches {longest}: a rollout would depend on "
            f"its batchmates; use --max-seq-len {limit} or less"
        )


def kv_bytes_per_token(config, dtype=torch.bfloat16):
    """KV-cache bytes one token takes in the engine: K and V of every layer, every KV head
    (Qwen2.5-Math-1.5B in bf16: 2 x 28 layers x 2 heads x 128 x 2 bytes = 28 KiB)."""
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    itemsize = torch.empty(0, dtype=dtype).element_size()
    return 2 * cfg.num_hidden_layers * kv_heads * head_dim * itemsize


def plan_generation(model, rows, max_len, free_bytes):
    """The generation memory plan (CUDA, fp32 weights generating through their bf16 copy): the
    rows (sequences decoding together) that fit in free_bytes, each `max_len` tokens long at
    most. Per row: its KV cache (kv_bytes_per_token x max_len), its next-token logits and the
    sampler's two fp32 copies of them (3 x vocabulary x 4 bytes), its token buffer (8 bytes a
    token); once: the bf16 copy of the weights (2 bytes a parameter). -> (rows to use, at most
    `rows`; one line for the console)."""
    cfg = model.config.get_text_config()
    per_token = kv_bytes_per_token(cfg, torch.bfloat16)
    per_row = max_len * (per_token + 8) + 3 * cfg.vocab_size * 4
    copy_bytes = 2 * sum(p.numel() for p in model.parameters())
    fit = max(1, int((free_bytes - copy_bytes) // per_row))
    use = min(rows, fit)
    gib = lambda b: f"{b / 2**30:.1f} GiB"
    line = (
        f"generation: {use} rows x {max_len} tokens x {per_token / 2**10:.0f} KiB/token of KV "
        f"cache = {gib(use * max_len * per_token)} (+ {gib(use * 3 * cfg.vocab_size * 4)} logits, "
        f"{gib(copy_bytes)} bf16 weights) of {gib(free_bytes)} free for it "
        f"-> --generation-batch-size {use}"
    )
    if use < rows:
        line += f" (asked {rows}: {fit} fit)"
    return use, line


# ----------------------------------------------------------------------------------------------
# Attention: grouped-query heads without copies, masks per layer type

_SDPA = "hdpo_engine_sdpa"  # the name _sdpa_attention is registered under for generate() calls
_GQA_FLAG = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 5)  # enable_gqa
# keyword arguments of an attention call that the masks already express (or that are inert)
_MASKED_BY_ENGINE = {"sliding_window", "position_ids", "cache_position", "use_cache"}


def _sdpa_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                    **kwargs):  # fmt: skip
    """transformers' sdpa attention, as the engine's forwards call it (generate() points the
    model's attention implementation here for the call). query [n, H, q, D], key/value
    [n, KV, kv, D], attention_mask [n, 1, q, kv] bool (True: may attend) or None (causal).
    Grouped-query heads are read without copies, whatever the transformers version: a decode
    step's G = H / KV query heads of a KV head become G queries of that head ([n, KV, G, D]: one
    token's mask is the same for all of them); a prefill uses SDPA's enable_gqa (torch >= 2.5,
    else the K/V are repeated, once per prompt group). Without a mask (a prompt group with no
    padding), SDPA is free to pick its fastest (flash) kernel. Any other argument (Gemma's
    soft-cap, sinks, ...) goes to transformers' own sdpa unchanged. -> ([n, q, H, D], None)"""
    if any(v is not None for k, v in kwargs.items() if k not in _MASKED_BY_ENGINE):
        return ALL_ATTENTION_FUNCTIONS["sdpa"](
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    n, H, q, D = query.shape
    G = H // key.shape[1]
    sdpa = torch.nn.functional.scaled_dot_product_attention
    if q == 1:  # decode: [n, KV, G, D] queries against [n, KV, kv, D], mask [n, 1, 1, kv]
        out = sdpa(query.view(n, H // G, G, D), key, value, attn_mask=attention_mask,
                   dropout_p=dropout, scale=scaling)  # fmt: skip
        return out.reshape(n, 1, H, D), None
    kw = {}
    if G > 1 and _GQA_FLAG:
        kw["enable_gqa"] = True
    elif G > 1:
        key, value = (t.repeat_interleave(G, dim=1) for t in (key, value))  # [n, H, kv, D]
    out = sdpa(query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling,
               is_causal=attention_mask is None, **kw)  # fmt: skip
    return out.transpose(1, 2).contiguous(), None  # [n, q, H, D]


@contextlib.contextmanager
def _engine_attention(model):
    """For one generate() call, the layers of a model on transformers' sdpa attention call
    _sdpa_attention (its name in the model's configs, restored after); eager stays eager."""
    configs = {id(m.config): m.config for m in model.modules() if hasattr(m, "config")}
    swapped = [c for c in configs.values() if getattr(c, "_attn_implementation", None) == "sdpa"]
    if swapped and _SDPA not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(_SDPA, _sdpa_attention)
    for c in swapped:
        c._attn_implementation = _SDPA
    try:
        yield
    finally:
        for c in swapped:
            c._attn_implementation = "sdpa"


def _mask_argument(layout, dtype, full, window):
    """The attention_mask argument of a forward, from bool masks [n, 1, q, kv] (True: may attend)
    of the full-attention layers and of the sliding-window ones (None: causal, no mask). Eager
    attention adds its mask: there the masks become 0 / dtype-min (and are never None)."""
    impl, has_window, per_type = layout
    if impl == "eager":
        full, window = (
            None if m is None else torch.zeros(m.shape, dtype=dtype, device=m.device)
            .masked_fill_(~m, torch.finfo(dtype).min)
            for m in (full, window)
        )  # fmt: skip
    if per_type:
        return {"full_attention": full, "sliding_attention": window}
    return window if has_window is not None else full


# ----------------------------------------------------------------------------------------------
# The KV cache of the decoding rows


class _Cache:
    """Keys and values of the rows decoding together, in the shape transformers' attention layers
    call: update(k, v, layer) -> (all keys, all values) for the attention.

    Per layer, k[l] and v[l] are [rows, kv_heads, cols, head_dim]. Row r holds lens[r] tokens
    in columns start[r] .. start[r] + lens[r] - 1 (a prompt keeps the columns of its left-padded
    prefill group), so its token at position p is in column start[r] + p; a decode step writes
    each row's new token at its own column start + lens (one index_put per layer) and the
    attention reads the first `width` columns, the mask hiding the others. start, lens and the
    fed tokens `ids` are device tensors updated in place, so a step needs nothing from the host
    (and is the same kernels at every step of a given width: a CUDA graph). Columns are added in
    chunks when a row needs them; rows leave and join without moving the others. While `prefill`
    is a dict, update() only collects a prompt group's keys and values.
    """

    def __init__(self, rows, chunk, device):
        self.rows, self.chunk = rows, chunk
        self.k, self.v = [], []  # per layer [rows, kv_heads, cols, head_dim], made at first insert
        self.cols = 0  # buffer width
        self.allocations = 0  # times the buffers were (re)allocated: a CUDA graph holds addresses
        self.width = 0  # columns the current decode step's attention reads
        self.start = torch.zeros(rows, dtype=torch.long, device=device)  # [rows]
        self.lens = torch.zeros(rows, dtype=torch.long, device=device)  # [rows]
        self.ids = torch.zeros(rows, dtype=torch.long, device=device)  # [rows] token fed next
        self.write = None  # [n] column each computed row writes this step (start + lens)
        self.prefill = None  # {layer: (k, v)} while a prompt group is forwarded

    def update(self, k, v, layer, *args, **kwargs):
        if self.prefill is not None:
            self.prefill[layer] = (k, v)  # [n, kv_heads, P, head_dim]
            return k, v
        n = k.shape[0]
        K, V = self.k[layer], self.v[layer]
        rows = torch.arange(n, device=k.device)
        K[rows, :, self.write] = k[:, :, 0]  # [n, kv_heads, head_dim] at each row's own column
        V[rows, :, self.write] = v[:, :, 0]
        return K[:n, :, : self.width], V[:n, :, : self.width]

    def get_seq_length(self, layer=0):  # asked by some transformers versions; positions are given
        return self.width

    def reserve(self, cols):
        """At least `cols` columns (a multiple of chunk): a new buffer per layer, old columns
        copied, the old layer freed before the next is made."""
        if cols <= self.cols:
            return
        new_cols = -(-cols // self.chunk) * self.chunk
        for bufs in (self.k, self.v):
            for i, old in enumerate(bufs):
                new = old.new_zeros(*old.shape[:2], new_cols, old.shape[3])
                new[:, :, : self.cols] = old
                bufs[i] = new
        self.cols = new_cols
        self.allocations += 1

    def insert(self, slots, kv, src, P):
        """Rows `slots` [m] take prompts of a prefill group of width P: kv[l] = (k, v)
        [n, kv_heads, P, head_dim], row slots[i] the group's prompt src[i] (samples of one prompt
        share it). One copy per layer."""
        if not self.k:  # first prompt: now the heads, head_dim, dtype and device are known
            self.cols = -(-P // self.chunk) * self.chunk
            self.allocations += 1
            for k, v in kv:
                shape = (self.rows, k.shape[1], self.cols, k.shape[3])
                self.k.append(k.new_zeros(shape))
                self.v.append(v.new_zeros(shape))
        self.reserve(P)
        for (k, v), K, V in zip(kv, self.k, self.v):
            K[slots, :, :P] = k[src]
            V[slots, :, :P] = v[src]

    def move(self, dst, src, width):
        """Rows src [m] into rows dst [m], their first `width` columns (the K/V; the caller moves
        the rest of a row's state)."""
        for buf in self.k + self.v:
            buf[dst, :, :width] = buf[src, :, :width]
        for t in (self.start, self.lens, self.ids):
            t[dst] = t[src]


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


def _forward(model, head, cache, input_ids, position_ids, mask, out):
    """One forward of input_ids [n, q] at position_ids [n, q] through the cache; the logits of
    every row's last position go into out [n, V] (no vocabulary-sized tensor per step when the
    head is plain)."""
    kw = dict(input_ids=input_ids, position_ids=position_ids, use_cache=True, attention_mask=mask)
    kw[_cache_argument(type(model.base_model))] = cache
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


@functools.lru_cache(maxsize=None)
def _cache_argument(cls):
    """The name the model's forward takes its KV cache under (transformers 4.x and 5.x)."""
    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


def _prefill(model, head, cache, layout, prompts, pad_id):
    """Forward a group of prompts (lists of token ids), left-padded to the longest, P. -> ([(k, v)
    per layer, each [n, kv_heads, P, head_dim]], next-token logits [n, V], P). Without padding
    (and no window shorter than P) the full-attention layers get no mask: causal attention."""
    device = model_device(model)
    P = max(len(p) for p in prompts)
    ids = _to_device([[pad_id] * (P - len(p)) + list(p) for p in prompts], device)  # [n, P]
    first = _to_device([P - len(p) for p in prompts], device)  # [n] first real column
    cols = torch.arange(P, device=device)
    pos = (cols[None, :] - first[:, None]).clamp_min_(0)  # [n, P] positions as transformers gives
    impl, window, _ = layout
    padded = any(len(p) < P for p in prompts)
    causal = cols[None, :] <= cols[:, None]  # [P, P] query row, key column
    full = sliding = None
    if padded or impl == "eager":
        # a padding query attends only to itself, so no row is fully masked (no NaN in the cache)
        full = causal & (cols[None, None, :] >= first[:, None, None]) | torch.eye(
            P, dtype=torch.bool, device=device
        )  # [n, P, P]
        full = full[:, None]  # [n, 1, P, P]
    if window is not None and (full is not None or P > window):
        band = cols[:, None] - cols[None, :] < window  # [P, P] the last `window` positions
        sliding = (causal[None, None] if full is None else full) & band  # [n or 1, 1, P, P]
    V = head.weight.shape[0] if head is not None else model.config.get_text_config().vocab_size
    dtype = next(model.parameters()).dtype
    logits = torch.empty(len(prompts), V, device=device, dtype=dtype)  # [n, V]
    cache.prefill = {}
    try:
        _forward(model, head, cache, ids, pos, _mask_argument(layout, dtype, full, sliding), logits)
        kv = [cache.prefill[layer] for layer in sorted(cache.prefill)]
    finally:
        cache.prefill = None
    return kv, logits, P


def _decode_forward(model, head, cache, layout, rows, out):
    """One decode step's forward for rows 0..rows-1: each feeds cache.ids at its position (lens)
    into its own column, the attention reads cache.width columns; logits into out [rows, V].
    Device tensors only: the same kernels at every step of a given (rows, width), which is
    what a CUDA graph captures."""
    start, lens = cache.start[:rows, None], cache.lens[:rows, None]  # [rows, 1]
    cache.write = (start + lens)[:, 0]  # [rows]
    c = torch.arange(cache.width, device=start.device)  # [W]
    full = (c >= start) & (c <= start + lens)  # [rows, W] the row's tokens and the new one
    sliding = None
    if layout[1] is not None:
        sliding = full & (c > start + lens - layout[1])  # [rows, W] its last `window` positions
        sliding = sliding[:, None, None]
    dtype = out.dtype
    mask = _mask_argument(layout, dtype, full[:, None, None], sliding)
    _forward(model, head, cache, cache.ids[:rows, None], lens, mask, out)


class _Graphs:
    """CUDA graphs of the decode forward, one per (rows, width) bucket: captured at its first
    step (after one eager warm-up run of the same step, whose writes the replay repeats: same
    tokens, same columns) and replayed after. They share one memory pool (they never run at once
    and write their results into buffers outside it) and are dropped when the cache's buffers
    are reallocated (their addresses are in the graphs). A capture that fails turns graphs off
    for the call, with one warning; the step then runs eagerly."""

    def __init__(self):
        self.graphs, self.pool, self.off, self.buffers = {}, None, False, None

    def run(self, key, fn, buffers):
        """fn() as the graph of `key`; buffers: the cache's allocation count (a change drops
        every graph)."""
        if self.off:
            return fn()
        if buffers != self.buffers:
            self.graphs, self.buffers = {}, buffers
        g = self.graphs.get(key)
        if g is None:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                fn()  # warm-up: this step's result
            torch.cuda.current_stream().wait_stream(side)
            try:
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g, pool=self.pool):
                    fn()
            except Exception as e:  # noqa: BLE001 - a forward that needs the host: run eagerly
                self.off = True
                msg = " ".join(str(e).split())[:200]
                warnings.warn(
                    f"engine: CUDA graph capture failed ({msg}); decoding eagerly", stacklevel=2
                )
                return
            self.pool, self.graphs[key] = g.pool(), g
        g.replay()


# ----------------------------------------------------------------------------------------------
# The decode loop

CUDA_GRAPHS = True  # decode steps on CUDA as CUDA graphs (_Graphs); False: eager
# decode steps between the host's reads of which rows finished: on CUDA the GPU runs ahead of the
# host meanwhile (rows that finished are computed and ignored until the read); on CPU a read
# costs nothing, and a finished row computed for nothing costs a row's step
SYNC_EVERY = {"cuda": 8, "cpu": 1}


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


def _to_device(values, device):
    """A long tensor of a Python list on device; on CUDA through pinned memory without waiting
    (the host does not sync with the GPU for it)."""
    t = torch.tensor(values, dtype=torch.long)
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t


def _decode(model, *args, **kwargs):
    """_continuous_batching with the engine's attention (_engine_attention)."""
    with _engine_attention(model):
        return _continuous_batching(model, *args, **kwargs)


def _continuous_batching(model, prompts, num_samples, caps, batch_size, greedy, temperature,
                         eos_ids, pad_id, chunk=256, prefill_tokens=16384, bar=None,
                         sync_every=None):  # fmt: skip
    """Continuous batching over the sequences (prompt i, sample s), in prompt-major order.
    prompts: token-id lists; caps[i]: new tokens allowed to prompt i's samples. chunk: KV
    columns added at a time; prefill_tokens: padded prompt tokens per prefill forward;
    sync_every: decode steps between the host's reads of which rows finished (default
    SYNC_EVERY[device type]). -> (per sequence (tokens, finished, entropy sum or None), stats).

    A decode step runs on the device alone: pick every row's token (argmax or
    sample_categorical), append it to the row's token buffer, mark rows that met an EOS or their
    cap, feed the tokens (one forward). Every sync_every steps the host reads which rows
    finished (one copy; one more for their tokens): their sequences are complete, the last live
    rows move into their places (rows 0..B-1 stay the live ones) and waiting sequences take the
    free rows: their prompts prefilled in groups and inserted one copy per layer per group. Rows
    that finished since the last read are computed and ignored until then. On CUDA the rows and
    columns computed are rounded up (rows to a power of two, columns to a chunk) so that few
    shapes occur, each a CUDA graph (_Graphs)."""
    device = model_device(model)
    cuda = device.type == "cuda"
    sync_every = sync_every or SYNC_EVERY.get(device.type, 1)
    layout = _attention_layout(model)
    head = _plain_head(model)
    n, T = len(prompts) * num_samples, max(caps)
    R = min(batch_size, n)
    cache = _Cache(R, chunk, device)
    graphs = _Graphs() if cuda and CUDA_GRAPHS and rope_length_limit(model) is None else None
    eos = _to_device(eos_ids, device)
    # per row, on the device: its generated tokens (and one spill column where finished rows
    # write), their count, the row's cap, whether it is live, its entropy sum
    tokens = torch.zeros(R, T + 1, dtype=torch.long, device=device)  # [R, T + 1]
    count = torch.zeros(R, dtype=torch.long, device=device)  # [R]
    cap = torch.zeros(R, dtype=torch.long, device=device)  # [R]
    live = torch.zeros(R, dtype=torch.bool, device=device)  # [R]
    entropy = torch.zeros(R, dtype=torch.float64, device=device)  # [R]
    logits = None  # [R, V] each row's next-token logits
    waiting = deque(range(n))  # sequence j: prompt j // num_samples
    seq = [None] * R  # host: the sequence in each row (None: free)
    top = [0] * R  # host: a row's last column (start + tokens held) minus the steps before it came
    groups, stored = {}, {}  # prefill groups {id: (kv, logits, P, samples left)}, prompt -> place
    outs = [None] * n
    stats = {"decode_steps": 0, "row_steps": 0, "prefill_tokens": 0, "prefill_groups": 0,
             "peak_cols": 0, "host_syncs": 0, "graphs": 0}  # fmt: skip
    B = step = 0  # live rows (as the host knows them), decode steps so far
    while True:
        if waiting and B < R:
            # 1. waiting sequences take the free rows; their prompts are prefilled in groups
            new = [waiting.popleft() for _ in range(min(len(waiting), R - B))]
            todo = list(dict.fromkeys(j // num_samples for j in new))
            todo = [i for i in todo if i not in stored]
            for group in _groups(todo, [len(prompts[i]) for i in todo], prefill_tokens):
                kv, lg, P = _prefill(model, head, cache, layout, [prompts[i] for i in group],
                                     pad_id)  # fmt: skip
                gid = stats["prefill_groups"] = stats["prefill_groups"] + 1
                groups[gid] = [kv, lg, P, len(group) * num_samples]
                stored.update({i: (gid, k) for k, i in enumerate(group)})
                stats["prefill_tokens"] += sum(len(prompts[i]) for i in group)
            slots = dict(zip(new, range(B, B + len(new))))  # sequence -> its row
            state = {}  # row -> (start, prompt length, cap)
            for gid in dict.fromkeys(stored[j // num_samples][0] for j in new):
                kv, lg, P, _ = groups[gid]
                if logits is None:
                    logits = lg.new_empty(R, lg.shape[-1])  # [R, V]
                mine = [j for j in new if stored[j // num_samples][0] == gid]
                rows_t = _to_device([slots[j] for j in mine], device)
                src_t = _to_device([stored[j // num_samples][1] for j in mine], device)
                cache.insert(rows_t, kv, src_t, P)  # one copy per layer for the group
                logits[rows_t] = lg[src_t]
                for j in mine:
                    p = len(prompts[j // num_samples])
                    state[slots[j]] = (P - p, p, caps[j // num_samples])
                groups[gid][3] -= len(mine)
                if groups[gid][3] == 0:  # every sample of the group's prompts has a row
                    del groups[gid]
            for j in new:
                if j % num_samples == num_samples - 1:  # its prompt's last sample has a row
                    del stored[j // num_samples]
            rows_t = _to_device(list(state), device)
            st = _to_device(list(state.values()), device)  # [m, 3]
            cache.start[rows_t], cache.lens[rows_t], cap[rows_t] = st[:, 0], st[:, 1], st[:, 2]
            count[rows_t], live[rows_t], entropy[rows_t] = 0, True, 0.0
            for j, r in slots.items():
                seq[r], top[r] = j, sum(state[r][:2]) - step
            B += len(new)
        if not B:
            break
        # 2. every row's next token, on the device: appended, and rows that met an EOS (kept in
        # the completion) or their cap stop
        rows = min(R, 1 << (B - 1).bit_length()) if graphs is not None else B
        lg = logits[:rows]  # [rows, V]
        if greedy:
            tok = lg.argmax(-1)  # [rows]
        else:
            tok, h = sample_categorical(lg, temperature)  # [rows], [rows] float64
        alive = live[:rows]
        tokens[torch.arange(rows, device=device), count[:rows]] = tok
        count[:rows] += alive
        if not greedy:
            entropy[:rows] += torch.where(alive, h, 0.0)
        alive &= ~(torch.isin(tok, eos) | (count[:rows] >= cap[:rows]))
        cache.ids[:rows] = tok
        if step % sync_every == 0:
            # 3. the host reads which rows finished: their sequences are complete, the last live
            # rows move into their places (rows 0..B-1 stay the live ones)
            stats["host_syncs"] += 1
            flags = torch.stack([live[:B].long(), count[:B]]).tolist()  # [2, B]
            done = [r for r in range(B) if not flags[0][r]]
            if done:
                idx = _to_device(done, device)
                got = tokens[idx, : max(flags[1][r] for r in done)].tolist()
                h = None if greedy else entropy[idx].tolist()
                stats["host_syncs"] += 1 + (not greedy)
                for i, r in enumerate(done):
                    toks = got[i][: flags[1][r]]
                    outs[seq[r]] = (toks, toks[-1] in eos_ids, None if greedy else h[i])
                    seq[r] = None
                if bar is not None:
                    bar.update(len(done))
                keep = [r for r in range(B) if seq[r] is not None]
                B = len(keep)
                src = [r for r in keep if r >= B]
                dst = [r for r in range(B) if seq[r] is None]
                if src:
                    s, d = _to_device(src, device), _to_device(dst, device)
                    cache.move(d, s, max(top[b] for b in src) + step)  # their columns so far
                    for t in (tokens, count, cap, live, entropy):
                        t[d] = t[s]
                    for a, b in zip(dst, src):
                        seq[a], top[a], seq[b] = seq[b], top[b], None
                cache.start[B:] = 0  # free rows attend to column 0 only: never a masked-out row
                cache.lens[B:] = 0
                if not B:
                    continue
                rows = min(R, 1 << (B - 1).bit_length()) if graphs is not None else B
        # 4. one forward: each row feeds its token into its own column
        width = max(top[:B]) + step + 1  # columns the longest live row needs, its new token too
        if graphs is not None:
            width = -(-width // chunk) * chunk
        cache.reserve(width)
        cache.width = width
        fwd = functools.partial(_decode_forward, model, head, cache, layout, rows, logits[:rows])
        if graphs is None:
            fwd()
        else:
            graphs.run((rows, width), fwd, cache.allocations)
            stats["graphs"] = max(stats["graphs"], len(graphs.graphs))
        cache.lens[:rows] += live[:rows]
        step += 1
        stats["decode_steps"] += 1
        stats["row_steps"] += rows
        stats["peak_cols"] = max(stats["peak_cols"], cache.cols)
    return [(t, f, None if greedy else h) for t, f, h in outs], stats


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
    (rows computed, summed over steps), prefill_tokens, peak_cols (KV buffer width), host_syncs
    (the host's reads of device values in the decode loop) and graphs (CUDA graphs captured).
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
    check_generation_support(model, max(len(ids) + c - 1 for ids, c in zip(encoded, caps)))

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
