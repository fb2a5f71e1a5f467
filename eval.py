"""Evaluate a causal LM on math problems: greedy accuracy (the paper's pass@1) and pass@k.

    python eval.py --model Qwen/Qwen2.5-Math-1.5B-Instruct --dataset HuggingFaceH4/MATH-500 --n 8 --k 1 4 8
    python eval.py --model /path/to/folder --dataset tests/data/math500.jsonl --limit 16 --n 4 --k 1 4

Metrics (HDPO paper, "Evaluation"):
  greedy   accuracy of one greedy decode per problem (reported as pass@1 in the paper's table)
  pass@k   unbiased estimator 1 - C(n-c, k) / C(n, k) (Chen et al., 2021) from n samples per problem
           at temperature T (default 1.0), averaged over problems; c = correct samples of that problem.
           Note that the sampled pass@1 (mean c/n) is a different number from `greedy`.

Scoring: verify.reward(response, answer) (Math-Verify), imported lazily.
hdpo.py imports load_problems, chat_prompt, generate, evaluate, summarize and load_model from here.
"""
import argparse
import json
import math
import operator
import os
import sys
import time
import warnings

SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."
# Qwen2.5-Math's `qwen25-math-cot` input template (QwenLM/Qwen2.5-Math evaluation/utils.py), rendered.
# Fill with str.replace("{input}", problem), never str.format (the literal \boxed{} would break it).
QWEN25_MATH_COT_TEMPLATE = (
    "<|im_start|>system\n" + SYSTEM_PROMPT + "<|im_end|>\n"
    "<|im_start|>user\n{input}<|im_end|>\n"
    "<|im_start|>assistant\n"
)

PROBLEM_KEYS = ("problem", "question", "prompt")
ANSWER_KEYS = ("expected_answer", "answer")
SOLUTION_KEYS = ("generated_solution", "solution")
LOCAL_EXTENSIONS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
# Hub datasets whose defaults differ from (config=None, split="train").
HUB_DEFAULTS = {
    "openai/gsm8k": {"config": "main"},
    "gsm8k": {"config": "main"},
    "HuggingFaceH4/MATH-500": {"split": "test"},  # the only split it has
}
DEFAULT_KS = (1, 4, 8)


class DataError(ValueError):
    """A dataset that cannot be used: the message names the dataset and, where it applies, the row."""


class ModelLoadError(RuntimeError):
    """A model or tokenizer that cannot be loaded: the message says why and what to do."""


class PromptTooLongError(ValueError):
    """A prompt that leaves no room for generation under max_seq_len."""


# ----------------------------------------------------------------------------- pass@k

def pass_at_k(n, c, k):
    """Unbiased pass@k estimator 1 - C(n-c, k) / C(n, k) (Chen et al., 2021).

    n samples of which c are correct. Computed as 1 - prod_{j<k} (1 - c / (n - j)) in log space
    (log1p / expm1), which needs k terms, never forms a binomial coefficient, and stays within a few
    ulps relative of the exact rational value (tests check 1e-12 relative against math.comb for
    n up to 1,024).
    """
    n, c, k = operator.index(n), operator.index(c), operator.index(k)
    if k < 1:
        raise ValueError(f"pass_at_k: k must be >= 1, got k={k}")
    if n < k:
        raise ValueError(f"pass_at_k: need at least k samples per problem, got n={n} < k={k}")
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: correct count c={c} must be between 0 and n={n}")
    if c == 0:
        return 0.0
    if n - c < k:  # every k-subset contains a correct sample
        return 1.0
    log_fail = math.fsum(math.log1p(-c / (n - j)) for j in range(k))
    return -math.expm1(log_fail)


# ----------------------------------------------------------------------------- data

def _is_local(dataset):
    return os.path.exists(dataset) or os.path.splitext(dataset)[1].lower() in LOCAL_EXTENSIONS \
        or dataset.startswith((".", "/", "~"))


def _load_dataset(dataset, split=None, config=None):
    import datasets

    if _is_local(dataset):
        path = os.path.expanduser(dataset)
        if not os.path.exists(path):
            raise DataError(f"dataset file {dataset!r} does not exist")
        if os.path.isdir(path):
            try:
                dsd = datasets.load_dataset(path)
            except Exception as e:
                raise DataError(f"cannot load dataset folder {dataset!r}: {_one_line(e)}") from e
            split = split or ("train" if "train" in dsd else next(iter(dsd), None))
            if split not in dsd:
                raise DataError(f"dataset folder {dataset!r} has no split {split!r} (it has: {', '.join(dsd) or 'none'})")
            return dsd[split]
        ext = os.path.splitext(path)[1].lower()
        if ext not in LOCAL_EXTENSIONS:
            raise DataError(f"dataset file {dataset!r}: unsupported extension {ext or '(none)'!r}; use .jsonl, .json or .parquet")
        if os.path.getsize(path) == 0 or (ext != ".parquet" and not _has_non_whitespace(path)):
            raise DataError(f"dataset {dataset!r} is empty")
        # A single file has one split, "train"; a `split` argument does not apply to it.
        try:
            return datasets.load_dataset(LOCAL_EXTENSIONS[ext], data_files=path, split="train")
        except Exception as e:
            raise DataError(f"cannot read dataset file {dataset!r}: {_one_line(e)}") from e

    defaults = HUB_DEFAULTS.get(dataset, {})
    config = config or defaults.get("config")
    split = split or defaults.get("split", "train")
    try:
        return datasets.load_dataset(dataset, config, split=split)
    except Exception as e:
        offline = _hub_offline() or "offline" in str(e).lower() or "connect" in str(e).lower()
        why = ("it is not a local file and the Hugging Face hub is unreachable (offline); download it first or "
               "pass a local .jsonl/.json/.parquet file") if offline else _one_line(e)
        raise DataError(f"cannot load dataset {dataset!r} (config {config!r}, split {split!r}): {why}") from e


def _has_non_whitespace(path):
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 16)
            if not chunk:
                return False
            if chunk.strip():
                return True


def _pick_key(columns, override, candidates, what, dataset, required=True):
    if override is not None:
        if override not in columns:
            raise DataError(f"dataset {dataset!r} has no column {override!r} (--{what}-key); columns: {', '.join(columns)}")
        return override
    for key in candidates:
        if key in columns:
            return key
    if required:
        raise DataError(f"dataset {dataset!r} has no {what} column (looked for {', '.join(candidates)}); "
                        f"columns: {', '.join(columns) or 'none'}; name one with --{what}-key")
    return None


def _split_gsm8k(text):
    """GSM8K answer text "...reasoning...\\n#### 1,234" -> ("...reasoning...", "1234")."""
    head, _, tail = text.rpartition("####")
    return head.strip(), tail.strip().replace(",", "")


def load_problems(dataset, split=None, config=None, problem_key=None, answer_key=None,
                  solution_key=None, limit=None):
    """Load math problems as [{"problem": str, "answer": str, "solution": str | None}, ...].

    dataset: a hub id (nvidia/OpenMathInstruct-2, HuggingFaceH4/MATH-500, openai/gsm8k -> config "main")
    or a local .jsonl / .json / .parquet file or a folder of them; all go through datasets.load_dataset.
    Keys: problem|question|prompt; expected_answer|answer; generated_solution|solution (overridable).
    GSM8K's "reasoning #### N" answer becomes answer N (commas dropped) and solution "reasoning".
    limit keeps the first `limit` rows. Raises DataError naming the row for a missing problem or answer,
    and for an empty dataset.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    ds = _load_dataset(dataset, split=split, config=config)
    if len(ds) == 0:
        raise DataError(f"dataset {dataset!r} is empty")
    columns = list(ds.column_names)
    pk = _pick_key(columns, problem_key, PROBLEM_KEYS, "problem", dataset)
    ak = _pick_key(columns, answer_key, ANSWER_KEYS, "answer", dataset)
    sk = _pick_key(columns, solution_key, tuple(k for k in SOLUTION_KEYS if k != ak), "solution", dataset,
                   required=False)
    if limit is not None and limit < len(ds):
        ds = ds.select(range(limit))
    ds = ds.select_columns([c for c in dict.fromkeys((pk, ak, sk)) if c is not None])
    problems_col = list(ds[pk])
    answers_col = list(ds[ak])
    solutions_col = list(ds[sk]) if sk is not None else [None] * len(problems_col)

    out = []
    for i, (p, a, s) in enumerate(zip(problems_col, answers_col, solutions_col)):
        if p is None or (isinstance(p, str) and not p.strip()):
            raise DataError(f"dataset {dataset!r}: row {i} (0-based) has no problem (column {pk!r} is missing or empty)")
        if a is None or (isinstance(a, str) and not a.strip()):
            raise DataError(f"dataset {dataset!r}: row {i} (0-based) has no answer (column {ak!r} is missing or empty)")
        a = str(a)
        if "####" in a:
            reasoning, a = _split_gsm8k(a)
            if not a:
                raise DataError(f"dataset {dataset!r}: row {i} (0-based) has nothing after '####' in column {ak!r}")
            if s is None:
                s = reasoning or None
        out.append({"problem": str(p), "answer": a.strip(), "solution": None if s is None else str(s)})
    return out


# ----------------------------------------------------------------------------- prompts and generation

def chat_prompt(tokenizer, user_text):
    """The string fed to the model for one problem: system prompt + user turn + assistant header.

    Uses the tokenizer's chat template with SYSTEM_PROMPT as the system message; if the template
    rejects a system role the system prompt goes in front of the user message; without a chat
    template, Qwen2.5-Math's qwen25-math-cot template (filled with str.replace, not str.format).
    """
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user_text}]
        try:
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception:  # e.g. jinja2 TemplateError "System role not supported"
            merged = [{"role": "user", "content": SYSTEM_PROMPT + "\n\n" + user_text}]
            return tokenizer.apply_chat_template(merged, tokenize=False, add_generation_prompt=True)
    return QWEN25_MATH_COT_TEMPLATE.replace("{input}", user_text)


def eos_token_ids(tokenizer, model=None):
    """Token ids that end a completion: tokenizer.eos_token_id, the model's generation_config
    eos_token_id (int or list) and <|im_end|> when the tokenizer has it as a token. Order kept, no repeats."""
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
    from transformers import GenerationConfig

    # Every sampling knob is explicit, and this config temporarily replaces model.generation_config while
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


def _model_device(model):
    dev = getattr(model, "device", None)
    if dev is not None:
        return dev
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return "cpu"


def sample_categorical(logits, temperature=1.0, block=128):
    """One token id per row, drawn from softmax(logits / temperature) by inverse CDF with one uniform per row;
    logits [B, V] -> [B] long, and logits is overwritten (callers pass a buffer they own).

    Exact up to the fp32 rounding of the probabilities, as torch.multinomial: the cumulative sums are float64
    and two-level (block sums, then within the chosen block), so no token's mass is lost to rounding in a
    151,936-long running sum. One uniform per row instead of multinomial's one exponential per vocabulary
    entry: ~8x less work than torch.multinomial on CPU at Qwen's vocabulary."""
    import torch
    import torch.nn.functional as F

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
    b = torch.searchsorted(c, u, right=True).clamp_max_(nb - 1)  # first block whose cumulative mass exceeds u
    u = (u - (c.gather(1, b) - w.gather(1, b))).clamp_min_(0)  # remainder inside block b
    inner = pb[torch.arange(B, device=p.device), b[:, 0]].double().cumsum(-1)  # [B, block]
    u = torch.minimum(u, inner[:, -1:] * (1 - 1e-12))  # rounding guard: stay inside the block's mass
    j = torch.searchsorted(inner, u, right=True).clamp_max_(block - 1)  # first token whose cumulative mass exceeds u
    return (b[:, 0] * block + j[:, 0]).clamp_max_(V - 1)


def _plain_head(model):
    """The lm_head Linear when the logits are exactly lm_head(last hidden state) (Qwen2, Llama, Mistral, ...);
    None when the model scales or soft-caps them (Gemma 2, Cohere, Granite, ...): then the model is called."""
    import torch

    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, torch.nn.Linear) or getattr(model, "base_model", model) is model:
        return None
    if any(getattr(cfg, k, None) not in (None, 1, 1.0) for k in ("final_logit_softcapping", "logit_scale", "logits_scaling",
                                                                   "lm_head_multiplier", "output_multiplier")):
        return None
    return head


def _decode(model, input_ids, attention_mask, max_new_tokens, greedy, temperature, eos_ids, pad_id):
    """Prefill, then one forward per new token on a static KV cache: what generate does, without its
    per-step logits processors and copies. The next-token logits go into one buffer reused at every step
    (nothing vocabulary-sized is allocated per token). input_ids, attention_mask [B, W] left-padded ->
    [B, <= max_new_tokens] token ids, pad_id after a row's first EOS; stops once every row has ended."""
    import inspect

    import torch
    from transformers import StaticCache

    B, W = input_ids.shape
    device = input_ids.device
    try:  # transformers >= 4.56: sized from the first update
        cache = StaticCache(config=model.config, max_cache_len=W + max_new_tokens)
    except TypeError:  # older: batch size, device and dtype up front
        cache = StaticCache(config=model.config, max_batch_size=B, max_cache_len=W + max_new_tokens, device=device,
                            dtype=next(model.parameters()).dtype)
    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
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
        return torch.mm(h, head.weight.t(), out=buf) if head.bias is None else torch.addmm(head.bias, h, head.weight.t(), out=buf)

    attn = torch.cat([attention_mask, attention_mask.new_ones(B, max_new_tokens)], 1)  # [B, W + new]
    pos = (attention_mask.cumsum(-1) - 1).clamp_min_(0)  # [B, W] positions of the left-padded rows
    logits = next_logits(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos, **{cache_kw: cache})
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
        logits = next_logits(input_ids=nxt[:, None], attention_mask=attn[:, :W + t + 1], position_ids=pos, **{cache_kw: cache})
    return torch.stack(toks, 1)


def generate(model, tokenizer, prompts, num_samples=1, temperature=1.0, max_new_tokens=512,
             batch_size=64, max_seq_len=None, greedy=False, eos_ids=None, progress=False, desc="generate"):
    """Generate num_samples completions for each already-formatted prompt string.

    Returns len(prompts) * num_samples dicts in prompt-major order (prompt 0's samples first):
    {"prompt_ids", "completion_ids", "text", "finished"}. completion_ids run up to and including the
    first token in eos_ids (finished=True), or are every generated token when none came (finished=False);
    nothing after the first EOS is kept, so pad == eos (Qwen's <|endoftext|>) is safe.

    Sequences (prompt x sample) are packed into batches of at most batch_size, longest prompts first,
    left-padded, with the KV cache. Sampling draws from torch's global RNG. With max_seq_len, each
    batch generates at most max_seq_len - (its longest prompt) tokens.
    """
    import torch
    from tqdm.auto import tqdm

    if num_samples < 0 or batch_size < 1 or max_new_tokens < 1:
        raise ValueError(f"generate: need num_samples >= 0, batch_size >= 1, max_new_tokens >= 1 "
                         f"(got {num_samples}, {batch_size}, {max_new_tokens})")
    if not greedy and not temperature > 0:
        raise ValueError(f"generate: temperature must be > 0 for sampling (got {temperature}); use greedy=True")
    prompts = list(prompts)
    if not prompts or num_samples == 0:
        return []
    eos_ids = list(eos_ids) if eos_ids is not None else eos_token_ids(tokenizer, model)
    if not eos_ids:
        raise ValueError("generate: no EOS token id (tokenizer and model define none); pass eos_ids")
    eos_set = set(eos_ids)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]

    encoded = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    for i, ids in enumerate(encoded):
        if not ids:
            raise ValueError(f"generate: prompt {i} is empty")
        if max_seq_len is not None and len(ids) >= max_seq_len:
            raise PromptTooLongError(
                f"prompt {i} is {len(ids)} tokens, which leaves no room to generate under max_seq_len={max_seq_len} "
                f"(starts: {prompts[i][:60]!r})")

    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))  # stable; longest first
    jobs = [(i, s) for i in order for s in range(num_samples)]
    batches = [jobs[b:b + batch_size] for b in range(0, len(jobs), batch_size)]
    results = [None] * (len(prompts) * num_samples)
    device = _model_device(model)

    from transformers import PreTrainedModel

    own_loop = isinstance(model, PreTrainedModel)
    was_training = getattr(model, "training", False)
    has_gc = hasattr(model, "generation_config")
    saved_gc = getattr(model, "generation_config", None)
    model.eval()
    try:
        with torch.no_grad():
            for batch in tqdm(batches, desc=desc, disable=not progress, unit="batch", dynamic_ncols=True):
                width = max(len(encoded[i]) for i, _ in batch)
                new = max_new_tokens if max_seq_len is None else min(max_new_tokens, max_seq_len - width)
                input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
                attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, (i, _) in enumerate(batch):
                    ids = encoded[i]
                    input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
                    attention_mask[row, width - len(ids):] = 1
                if own_loop:  # a transformers model: our decode loop (same tokens as generate for greedy)
                    gen = _decode(model, input_ids.to(device), attention_mask.to(device), new, greedy, temperature,
                                  eos_ids, pad_id).tolist()
                else:  # anything else with a generate() (e.g. a stand-in in tests)
                    gen_config = _generation_config(greedy, temperature, new, pad_id, eos_ids)
                    if has_gc:  # so that nothing from the checkpoint's generation_config.json fills in unset fields
                        model.generation_config = gen_config
                    out = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                                         generation_config=gen_config)
                    gen = out[:, width:].tolist()
                for row, (i, s) in enumerate(batch):
                    toks = gen[row]
                    cut = next((t for t, tok in enumerate(toks) if tok in eos_set), None)
                    completion = toks if cut is None else toks[:cut + 1]
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


# ----------------------------------------------------------------------------- evaluation

def summarize(per_problem, ks, n):
    """Combine per-problem results [{"greedy_correct": bool | None, "correct": int}, ...] into
    {"greedy", "pass@K" for each K, "n_problems", "n_samples"}. greedy is None when no problem has a
    greedy result; a k > n is left out (no pass@k without k samples). Problems can come from several
    ranks: concatenate their lists and call this once."""
    per_problem = list(per_problem)
    greedy_vals = [p["greedy_correct"] for p in per_problem if p.get("greedy_correct") is not None]
    out = {"greedy": (sum(bool(g) for g in greedy_vals) / len(greedy_vals)) if greedy_vals else None}
    for k in ks:
        if k > n:  # evaluate() already warned; n == 0 means greedy only
            continue
        vals = [pass_at_k(n, int(p["correct"]), k) for p in per_problem]
        out[f"pass@{k}"] = math.fsum(vals) / len(vals) if vals else None
    out["n_problems"] = len(per_problem)
    out["n_samples"] = n
    return out


def _is_correct(reward_fn, response, answer):
    return float(reward_fn(response, answer)) >= 1.0


def evaluate(model, tokenizer, problems, answers, n=8, ks=DEFAULT_KS, temperature=1.0, max_new_tokens=4096,
             batch_size=64, max_seq_len=None, greedy=True, progress=True, generate_fn=None, reward_fn=None):
    """Greedy accuracy and pass@k of `model` on (problems, answers).

    One greedy decode per problem gives `greedy` (the paper's pass@1); n samples per problem at
    `temperature` give per-problem correct counts and pass@k for each k in ks (k > n is skipped with a
    warning; n == 0 gives greedy only). Returns summarize(...) plus "per_problem" (greedy_correct, correct
    per problem), "generated_tokens" and "generation_seconds".
    generate_fn (default: generate) and reward_fn (default: verify.reward) are the hooks tests use.
    """
    problems, answers = list(problems), [str(a) for a in answers]
    if len(problems) != len(answers):
        raise ValueError(f"evaluate: {len(problems)} problems but {len(answers)} answers")
    if n < 0:
        raise ValueError(f"evaluate: n must be >= 0, got {n}")
    generate_fn = generate_fn or generate
    if reward_fn is None:
        from verify import reward as reward_fn
    kept = []
    for k in ks if n > 0 else ():  # n == 0: greedy only
        if k > n:
            warnings.warn(f"pass@{k} needs at least {k} samples per problem but n={n}; skipping it")
        elif k not in kept:
            kept.append(k)

    prompts = [chat_prompt(tokenizer, p) for p in problems]
    common = dict(max_new_tokens=max_new_tokens, batch_size=batch_size, max_seq_len=max_seq_len, progress=progress)
    tokens, seconds = 0, 0.0

    greedy_correct = [None] * len(problems)
    if greedy and problems:
        t0 = time.perf_counter()
        outs = generate_fn(model, tokenizer, prompts, num_samples=1, greedy=True, desc="greedy", **common)
        seconds += time.perf_counter() - t0
        tokens += sum(len(o.get("completion_ids", ())) for o in outs)
        greedy_correct = [_is_correct(reward_fn, o["text"], a) for o, a in zip(outs, answers)]

    correct = [0] * len(problems)
    if n > 0 and problems:
        t0 = time.perf_counter()
        outs = generate_fn(model, tokenizer, prompts, num_samples=n, temperature=temperature, greedy=False,
                           desc=f"sample n={n}", **common)
        seconds += time.perf_counter() - t0
        tokens += sum(len(o.get("completion_ids", ())) for o in outs)
        for j, o in enumerate(outs):
            correct[j // n] += _is_correct(reward_fn, o["text"], answers[j // n])

    per_problem = [{"greedy_correct": g, "correct": c} for g, c in zip(greedy_correct, correct)]
    result = summarize(per_problem, kept, n)
    result["per_problem"] = per_problem
    result["generated_tokens"] = tokens
    result["generation_seconds"] = seconds
    return result


# ----------------------------------------------------------------------------- model loading

def _hub_offline():
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _one_line(e):
    text = " ".join(str(e).split())
    return (text[:300] + "...") if len(text) > 300 else (text or type(e).__name__)


def load_model(name_or_path, device=None, dtype=None):
    """(model, tokenizer) from a local folder or a hub id, in eval mode on `device`.

    device defaults to cuda when available, else cpu; dtype to bfloat16 on cuda, float32 on cpu.
    Raises ModelLoadError with a one-line reason (missing folder, hub unreachable, broken checkpoint).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    elif isinstance(dtype, str):
        dtype = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
                 "fp32": torch.float32, "float32": torch.float32}[dtype]
    local = os.path.isdir(os.path.expanduser(name_or_path))
    path = os.path.expanduser(name_or_path) if local else name_or_path
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except Exception as e:
        if local:
            raise ModelLoadError(f"cannot load model from folder {name_or_path!r}: {_one_line(e)}") from e
        looks_like_path = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1 \
            or os.sep in name_or_path and os.sep != "/"
        if looks_like_path:
            raise ModelLoadError(f"cannot load model {name_or_path!r}: no such folder. "
                                 f"Pass a local folder: --model /path/to/folder") from e
        cls = type(e).__name__
        if not _hub_offline() and ("RepositoryNotFound" in cls or "404" in str(e)):
            raise ModelLoadError(f"cannot load model {name_or_path!r}: not a local folder and not a model on the "
                                 f"Hugging Face hub. Pass a local folder: --model /path/to/folder") from e
        raise ModelLoadError(
            f"cannot load model {name_or_path!r}: not a local folder and the Hugging Face hub is unreachable "
            f"(offline). Download it first (hf download {name_or_path} --local-dir DIR) or pass a "
            f"local folder: --model /path/to/folder") from e
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device)
    model.eval()
    return model, tokenizer


# ----------------------------------------------------------------------------- CLI

def _int_at_least(lo):
    def parse(s):
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {s!r}")
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {v}")
        return v
    parse.__name__ = f"int>={lo}"
    return parse


def _positive_float(s):
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}")
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {s}")
    return v


def build_parser():
    p = argparse.ArgumentParser(
        prog="eval.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Errors in the input (missing model, bad dataset rows, empty dataset) print one line and exit 1; "
               "--debug shows the traceback.")
    g = p.add_argument_group("model and data")
    g.add_argument("--model", required=True, help="local model folder or Hugging Face hub id")
    g.add_argument("--dataset", required=True,
                   help="hub id (nvidia/OpenMathInstruct-2, HuggingFaceH4/MATH-500, openai/gsm8k) "
                        "or a local .jsonl / .json / .parquet file or folder")
    g.add_argument("--split", default=None, help="dataset split (hub: default train; MATH-500: test; "
                                                 "ignored for a single local file)")
    g.add_argument("--config", default=None, help="dataset config (openai/gsm8k: main by default)")
    g.add_argument("--problem-key", default=None, help="column holding the problem (default: problem|question|prompt)")
    g.add_argument("--answer-key", default=None, help="column holding the answer (default: expected_answer|answer)")
    g.add_argument("--limit", type=_int_at_least(1), default=None, help="evaluate the first N problems only")

    g = p.add_argument_group("sampling")
    g.add_argument("--n", type=_int_at_least(0), default=8, help="samples per problem for pass@k (default 8; 0: greedy only)")
    g.add_argument("--k", type=_int_at_least(1), nargs="+", default=None,
                   help="k values for pass@k (default 1 4 8, keeping those <= n; an explicit k > n is an error)")
    g.add_argument("--temperature", type=_positive_float, default=1.0, help="sampling temperature (default 1.0)")
    g.add_argument("--no-greedy", action="store_true", help="skip the greedy decode (greedy reported as null)")
    g.add_argument("--max-new-tokens", type=_int_at_least(1), default=4096, help="default 4096")
    g.add_argument("--max-seq-len", type=_int_at_least(2), default=None,
                   help="cap prompt + completion length (the paper trains with 4096); default: no cap")
    g.add_argument("--seed", type=int, default=42, help="seeds python, numpy and torch (default 42)")

    g = p.add_argument_group("runtime")
    g.add_argument("--batch-size", type=_int_at_least(1), default=None,
                   help="sequences per generate() call (default: 64 on GPU, 32 on CPU)")
    g.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    g.add_argument("--dtype", default=None, choices=["bf16", "fp16", "fp32"],
                   help="default: bf16 on cuda, fp32 on cpu")
    g.add_argument("--output", default=None, help="write the results JSON here")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g.add_argument("--debug", action="store_true", help="show Python tracebacks on errors")
    return p


def _format_table(res, args, ks, batch_size):
    rows = [("greedy (pass@1)", res["greedy"])] + [(f"pass@{k}", res[f"pass@{k}"]) for k in ks]
    lines = [f"model    {args.model}",
             f"dataset  {args.dataset}   problems {res['n_problems']}   n {res['n_samples']}   T {args.temperature}",
             f"{'metric':<16}{'value':>8}"]
    lines += [f"{name:<16}{'-' if v is None else f'{v:.4f}':>8}" for name, v in rows]
    tps = res["tokens_per_second"]
    lines.append(f"generation: {res['generated_tokens']} tokens in {res['generation_seconds']:.2f} s = "
                 f"{tps:.1f} tokens/s (batch size {batch_size})")
    return "\n".join(lines)


def quiet_libraries():
    """No library progress bars or info logs on the CLI: errors stay one line, the table stays readable."""
    try:
        import datasets
        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    except Exception:
        pass
    try:
        from transformers.utils import logging as tlog
        tlog.disable_progress_bar()
        tlog.set_verbosity_error()
    except Exception:
        pass


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.k is None:
        ks = [k for k in DEFAULT_KS if k <= args.n]
    else:
        ks = list(dict.fromkeys(args.k))
        too_big = [k for k in ks if k > args.n]
        if too_big:
            parser.error(f"--k {' '.join(map(str, too_big))} needs at least that many samples per problem, but --n is {args.n}")
    quiet_libraries()
    try:
        problems = load_problems(args.dataset, split=args.split, config=args.config, problem_key=args.problem_key,
                                 answer_key=args.answer_key, limit=args.limit)
        from transformers import set_seed

        model, tokenizer = load_model(args.model, device=args.device, dtype=args.dtype)
        batch_size = args.batch_size or (64 if _model_device(model).type == "cuda" else 32)
        set_seed(args.seed)
        res = evaluate(model, tokenizer, [p["problem"] for p in problems], [p["answer"] for p in problems],
                       n=args.n, ks=ks, temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                       batch_size=batch_size, max_seq_len=args.max_seq_len, greedy=not args.no_greedy,
                       progress=not args.no_progress)
    except (DataError, ModelLoadError, PromptTooLongError) as e:
        if args.debug:
            raise
        print(f"eval.py: error: {_one_line(e)}", file=sys.stderr)
        return 1
    res["tokens_per_second"] = res["generated_tokens"] / res["generation_seconds"] if res["generation_seconds"] else 0.0
    out = {"greedy": res["greedy"]}
    out.update({f"pass@{k}": res[f"pass@{k}"] for k in ks})
    out.update(n_problems=res["n_problems"], n_samples=res["n_samples"], model=args.model, dataset=args.dataset,
               split=args.split, temperature=args.temperature, max_new_tokens=args.max_new_tokens,
               batch_size=batch_size, seed=args.seed, device=str(_model_device(model)),
               generated_tokens=res["generated_tokens"], generation_seconds=round(res["generation_seconds"], 3),
               tokens_per_second=round(res["tokens_per_second"], 2),
               per_problem=[dict(p, answer=q["answer"]) for p, q in zip(res["per_problem"], problems)])
    print(_format_table(res, args, ks, batch_size))
    if args.output:
        d = os.path.dirname(os.path.abspath(args.output))
        os.makedirs(d, exist_ok=True)
        with open(args.output, "w") as f:
            json.dump(out, f, indent=2)
            f.write("\n")
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
