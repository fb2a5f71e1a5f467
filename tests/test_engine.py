"""Tests for engine.py: EOS ids, the sampler and its entropy, continuous batching (order, EOS,
per-row caps, finished rows leaving), greedy equality with transformers' generate, the bf16
generation copy."""

import copy
import os

import pytest
import torch
from conftest import DATA, small_model

import engine as G
import hdpo
from data import chat_prompt
from harness.loading import load_model

TOKENIZER_DIR = os.path.join(DATA, "qwen2.5-math-1.5b")
ENDOFTEXT, IM_END = 151643, 151645
SMOLLM2 = os.environ.get("HDPO_SMOLLM2", "")  # a SmolLM2-135M-Instruct folder, if any
# greedy may differ from generate's only after a position where generate's own two best logits
# are this close: fp32 rounding of a different batch shape (rows leave, others join) can flip it
NEAR_TIE = 1e-3


@pytest.fixture(scope="module")
def qwen_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


@pytest.fixture(scope="module")
def tiny(tiny_qwen_dir):
    return load_model(tiny_qwen_dir, device="cpu")


@pytest.fixture(scope="module")
def ctx(qwen_tokenizer):
    """A tiny random Qwen2 (hidden 64, 2 layers, the real tokenizer) whose greedy tokens depend on
    the context: untied head, weights of std 0.3. (offline.py's tied, std-0.02 model repeats the
    prompt's last token under greedy decoding, which would make greedy comparisons vacuous; its
    top logits are also ~1e-3 apart, near-ties for fp32 rounding.)"""
    import json

    from transformers import Qwen2Config, Qwen2ForCausalLM

    with open(os.path.join(TOKENIZER_DIR, "config.json")) as f:
        cfg = {k: v for k, v in json.load(f).items() if k not in ("architectures", "torch_dtype")}
    cfg.update(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=128, max_window_layers=2, tie_word_embeddings=False,
        initializer_range=0.3,
    )  # fmt: skip
    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(**cfg)).eval(), qwen_tokenizer


def questions(n):
    import json

    with open(os.path.join(DATA, "gsm8k_test.jsonl")) as f:
        return [json.loads(line)["question"] for _, line in zip(range(n), f)]


def free_run(model, tok, prompts, n_new, **kw):
    """Greedy completions with an EOS that never comes: every row runs to its cap."""
    return G.generate(model, tok, prompts, greedy=True, max_new_tokens=n_new, eos_ids=[-5], **kw)


def assert_greedy_matches_generate(model, tok, prompts, outs, eos, max_new, max_near_ties=0):
    """outs (ours, greedy) against transformers' generate on the same prompts, one left-padded
    batch. A row may differ only after a near-tie of generate's own logits; at most
    max_near_ties rows may."""
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        ref = model.generate(
            **enc, do_sample=False, max_new_tokens=max_new, eos_token_id=list(eos),
            pad_token_id=tok.pad_token_id, top_k=None, top_p=None, temperature=None,
        )[:, enc.input_ids.shape[1] :].tolist()  # fmt: skip
    near_ties = 0
    for o, r in zip(outs, ref):
        cut = next((t + 1 for t, x in enumerate(r) if x in eos), len(r))
        r = r[:cut]
        if o["completion_ids"] == r:
            assert o["finished"] == (r[-1] in eos)
            continue
        t = next(t for t, (a, b) in enumerate(zip(o["completion_ids"], r)) if a != b)
        ids = torch.tensor([o["prompt_ids"] + r[:t]])
        with torch.no_grad():
            top2 = model(input_ids=ids).logits[0, -1].topk(2).values
        assert float(top2[0] - top2[1]) < NEAR_TIE, f"differs at token {t} without a near-tie"
        near_ties += 1
    assert near_ties <= max_near_ties


# ----------------------------------------------------------------------------- EOS


def test_eos_token_ids_union(qwen_tokenizer):
    class M:
        class generation_config:
            eos_token_id = [ENDOFTEXT, 7]

    assert G.eos_token_ids(qwen_tokenizer) == [ENDOFTEXT, IM_END]
    assert G.eos_token_ids(qwen_tokenizer, M()) == [ENDOFTEXT, 7, IM_END]


# ----------------------------------------------------------------------------- the sampler


@pytest.mark.parametrize("V, temperature", [(7, 1.0), (300, 0.6)])
def test_sampler_draws_from_softmax_and_returns_its_entropy(V, temperature):
    g = torch.Generator().manual_seed(0)
    row = torch.randn(V, generator=g) * 3  # [V]; V = 300 is 3 blocks of 128, the last padded
    q = torch.softmax(row.double() / temperature, -1)  # [V] the distribution to draw from
    n = 200_000
    torch.manual_seed(1)
    toks, ent = G.sample_categorical(row.expand(n, V).clone(), temperature)  # [n], [n]
    freq = torch.bincount(toks, minlength=V).double() / n  # [V]
    sigma = (q * (1 - q) / n).sqrt()
    assert ((freq - q).abs() <= 5 * sigma + 1e-6).all()
    h = -(q * q.log()).sum()
    assert torch.allclose(ent, h.expand(n), rtol=1e-6)


# ----------------------------------------------------------------------------- continuous batching


def test_per_row_caps_do_not_depend_on_the_batch(ctx):
    model, tok = ctx
    prompts = [chat_prompt(tok, q) for q in ("2+2?", "What is 12 times 13? Think.", "x", "Why?")]
    lens = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    max_seq_len = max(lens) + 2  # caps from 2 (the longest prompt) to 12 (max_new_tokens)
    want = [min(12, max_seq_len - n) for n in lens]
    assert len(set(want)) > 2
    runs = [
        free_run(model, tok, prompts, 12, batch_size=b, max_seq_len=max_seq_len) for b in (1, 2, 4)
    ]
    for out in runs:
        assert [len(o["completion_ids"]) for o in out] == want
        assert not any(o["finished"] for o in out)
        assert [o["completion_ids"] for o in out] == [o["completion_ids"] for o in runs[0]]


def test_continuous_batching_returns_every_sequence_in_order_with_eos(ctx):
    """5 prompts x 3 samples through 2 rows: sequences end at different tokens (the EOS is a token
    the free run produces), leave, and are replaced; each completion is the free run's up to and
    including its first EOS; finished rows are never computed again; each prompt is forwarded
    once."""
    model, tok = ctx
    prompts = [chat_prompt(tok, q) for q in questions(5)]
    free = free_run(model, tok, prompts, 12, batch_size=8)
    firsts = [o["completion_ids"] for o in free]
    eos = [firsts[0][3], firsts[2][6]]  # two ids, so rows stop at different steps
    stats = {}
    out = G.generate(
        model, tok, prompts, num_samples=3, greedy=True, max_new_tokens=12, batch_size=2,
        eos_ids=eos, stats=stats,
    )  # fmt: skip
    assert len(out) == 15
    for j, o in enumerate(out):
        f = firsts[j // 3]
        cut = next((t + 1 for t, x in enumerate(f) if x in eos), len(f))
        assert o["prompt_ids"] == free[j // 3]["prompt_ids"]  # prompt-major order
        assert o["completion_ids"] == f[:cut] and o["finished"] == (cut < len(f) or f[-1] in eos)
        assert o["entropy"] is None  # greedy
    assert len({len(o["completion_ids"]) for o in out}) > 1, "the test needs ragged lengths"
    # a row is computed once per token after its first (the first comes from the prompt's forward)
    assert stats["row_steps"] == sum(len(o["completion_ids"]) - 1 for o in out)
    assert stats["prefill_tokens"] == sum(len(o["prompt_ids"]) for o in free)


def test_prefill_in_groups_changes_nothing(ctx):
    """Prompts prefilled one per forward (prefill_tokens=1) or all in one forward: the same
    greedy completions."""
    model, tok = ctx
    prompts = [
        tok(chat_prompt(tok, q), add_special_tokens=False)["input_ids"] for q in questions(4)
    ]
    args = (model, prompts, 2, [6] * 4, 3, True, 1.0, [-5], tok.pad_token_id)  # 2 samples, 3 rows
    with torch.no_grad():  # as generate() calls it
        runs = [G._decode(*args, prefill_tokens=budget)[0] for budget in (1, 10**6)]
    assert runs[0] == runs[1] and len(runs[0]) == 8


def test_cap_of_4096_costs_nothing_until_used(ctx):
    model, tok = ctx
    prompts = [chat_prompt(tok, q) for q in questions(4)]
    free = free_run(model, tok, prompts, 6, batch_size=4)
    eos = sorted({o["completion_ids"][-1] for o in free})  # every row stops by token 6
    runs = {}
    for cap in (8, 4096):
        stats = {}
        out = G.generate(model, tok, prompts, greedy=True, max_new_tokens=cap, eos_ids=eos,
                         stats=stats)  # fmt: skip
        runs[cap] = ([o["completion_ids"] for o in out], stats)
    assert runs[8][0] == runs[4096][0] and all(o["finished"] for o in out)
    assert runs[8][1]["decode_steps"] == runs[4096][1]["decode_steps"] <= 5
    longest = max(len(o["prompt_ids"]) for o in out)
    assert runs[4096][1]["peak_cols"] <= longest + 256  # one chunk, not 4,096 columns


def test_batched_greedy_matches_one_by_one(ctx):
    model, tok = ctx
    prompts = [
        chat_prompt(tok, q)
        for q in (
            "2+2?",
            "What is the sum of the first ten positive integers, please?",
            "Let $x=3$. Find $x^2$.",
        )
    ]
    batched = G.generate(model, tok, prompts, greedy=True, max_new_tokens=6, batch_size=3)
    for p, b in zip(prompts, batched):
        single = G.generate(model, tok, [p], greedy=True, max_new_tokens=6, batch_size=1)[0]
        assert single["completion_ids"] == b["completion_ids"]
        assert b["prompt_ids"] == tok(p, add_special_tokens=False)["input_ids"]


# ----------------------------------------------------------------------------- equal to generate


def test_greedy_equals_transformers_generate_tiny(ctx):
    model, tok = ctx
    prompts = [chat_prompt(tok, q) for q in questions(5)]
    free = free_run(model, tok, prompts, 10, batch_size=8)
    eos = [free[1]["completion_ids"][4], free[3]["completion_ids"][2]]  # ragged ends
    out = G.generate(model, tok, prompts, greedy=True, max_new_tokens=10, batch_size=2,
                     eos_ids=eos)  # fmt: skip
    assert_greedy_matches_generate(model, tok, prompts, out, eos, 10)


@pytest.mark.skipif(
    not os.path.exists(os.path.join(SMOLLM2, "model.safetensors")),
    reason="set HDPO_SMOLLM2 to a SmolLM2-135M-Instruct folder to run it",
)
def test_greedy_equals_transformers_generate_real_model():
    """SmolLM2-135M-Instruct stops on its own: rows end at different lengths, leave the batch
    and are replaced (batch_size 3 for 6 prompts)."""
    model, tok = load_model(SMOLLM2, device="cpu")
    prompts = [chat_prompt(tok, q) for q in questions(6)]
    eos = G.eos_token_ids(tok, model)
    out = G.generate(model, tok, prompts, greedy=True, max_new_tokens=160, batch_size=3)
    assert any(o["finished"] for o in out)
    assert_greedy_matches_generate(model, tok, prompts, out, eos, 160, max_near_ties=1)


# ----------------------------------------------------------------------------- entropy


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_entropy_equals_float64_recomputation(ctx, temperature):
    """Each sampled completion's entropy is the sum, over its tokens, of H(softmax(logits / T))
    of the distribution the token was drawn from: recomputed here by forwarding prompt +
    completion through the model and taking the entropy in float64 over the full vocabulary."""
    model, tok = ctx
    prompts = [chat_prompt(tok, q) for q in questions(3)]
    torch.manual_seed(0)
    out = G.generate(model, tok, prompts, num_samples=2, temperature=temperature,
                     max_new_tokens=6, batch_size=4)  # fmt: skip
    for o in out:
        p, c = o["prompt_ids"], o["completion_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([p + c])).logits[0, len(p) - 1 : -1]  # [|c|, V]
        logq = torch.log_softmax(logits.double() / temperature, -1)  # [|c|, V] float64
        h = float(-(logq.exp() * logq).sum())
        assert o["entropy"] == pytest.approx(h, rel=1e-4)
    assert all(o["entropy"] is None for o in G.generate(model, tok, prompts[:1], greedy=True,
                                                        max_new_tokens=2))  # fmt: skip


# ----------------------------------------------------------------------------- sampling settings


def test_sampling_ignores_model_top_k_and_top_p(tiny):
    model, tok = tiny
    saved = model.generation_config
    model.generation_config = type(saved).from_dict(
        {
            **saved.to_dict(),
            "do_sample": False,
            "top_k": 1,
            "top_p": 0.01,
            "repetition_penalty": 5.0,
            "temperature": 0.01,
        }
    )
    try:
        torch.manual_seed(0)
        out = G.generate(
            model, tok, [chat_prompt(tok, "1+1?")], num_samples=16, max_new_tokens=1, batch_size=16
        )
    finally:
        model.generation_config = saved
    firsts = [o["completion_ids"][0] for o in out]
    # a random 151,936-token model at T=1 almost never repeats a token in 16 draws; top_k=1 would
    # give 1 distinct
    assert len(set(firsts)) >= 12


def test_max_seq_len_rejects_prompts_without_room(tiny):
    model, tok = tiny
    p = chat_prompt(tok, "one two three")
    n = len(tok(p, add_special_tokens=False)["input_ids"])
    out = free_run(model, tok, [p], 100, max_seq_len=n + 4)
    assert len(out[0]["completion_ids"]) == 4
    with pytest.raises(G.PromptTooLongError, match="prompt 1 is"):
        G.generate(model, tok, ["a", p], max_new_tokens=5, max_seq_len=n)


def test_real_model_cut_at_first_eos(tiny):
    model, tok = tiny
    prompts = [chat_prompt(tok, "Count: 1, 2, 3"), chat_prompt(tok, "x")]
    torch.manual_seed(1)
    free = G.generate(model, tok, prompts, max_new_tokens=6, eos_ids=[-5])  # an id that never comes
    assert all(len(o["completion_ids"]) == 6 and not o["finished"] for o in free)
    toks = free[0]["completion_ids"]
    stop = toks[2]
    assert stop not in toks[:2]
    torch.manual_seed(1)
    cut = G.generate(
        model, tok, prompts, max_new_tokens=6, eos_ids=[stop]
    )  # same RNG draws until the stop
    assert cut[0]["completion_ids"] == toks[:3] and cut[0]["finished"]


def test_sampling_reproducible_with_torch_seed(tiny):
    model, tok = tiny
    prompts = [chat_prompt(tok, "a"), chat_prompt(tok, "bb")]
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        out = G.generate(model, tok, prompts, num_samples=3, max_new_tokens=4, batch_size=4)
        runs.append([o["completion_ids"] for o in out])
    assert runs[0] == runs[1]
    assert len(runs[0]) == 6


def test_generation_runs_without_grad_and_restores_train_mode(tiny):
    model, tok = tiny
    seen = []
    hook = model.base_model.register_forward_hook(
        lambda m, a, o: seen.append((torch.is_grad_enabled(), m.training))
    )
    model.train()
    try:
        G.generate(model, tok, [chat_prompt(tok, "1+1?")], max_new_tokens=3)
    finally:
        hook.remove()
        training = model.training
        model.eval()
    assert seen and all(s == (False, False) for s in seen) and training


# ----------------------------------------------------------------------------- bf16 copy (GPU path)


@pytest.mark.parametrize("impl", ["for-loop", "foreach", "fused"])
def test_bf16_generation_copy_follows_the_optimiser(tiny_qwen_dir, impl):
    """On CUDA, fp32 weights generate through a bf16 copy; checked here on CPU by asking for it.
    Parameters bf16, buffers (RoPE) as they were, ties kept; the same copy, refreshed after an
    optimiser step (whichever AdamW implementation)."""
    model, tok = load_model(tiny_qwen_dir, device="cpu", dtype=torch.float32)
    gen = G._generation_model(model, torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in gen.parameters())
    assert [b.dtype for b in gen.buffers()] == [b.dtype for b in model.buffers()]
    assert (gen.get_output_embeddings().weight is gen.get_input_embeddings().weight) == (
        model.get_output_embeddings().weight is model.get_input_embeddings().weight
    )
    assert G._generation_model(model) is model  # CPU: the fp32 model itself
    flags = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, **flags[impl])
    model(input_ids=torch.tensor([[1, 2, 3]])).logits.sum().backward()
    opt.step()
    assert G._generation_model(model, torch.bfloat16) is gen  # refreshed in place
    for g, p in zip(gen.parameters(), model.parameters()):
        assert torch.equal(g, p.detach().to(torch.bfloat16))
    out = G._decode(gen, [[1, 2, 3]], 2, [4], 2, True, 1.0, [-5], 0)[0]
    assert [len(t) for t, _, _ in out] == [4, 4]  # the bf16 copy generates (bf16 KV cache)


# ----------------------------------------------------------------------------- CPU packed weights


@pytest.mark.skipif(
    not G.packing_available(), reason="packed weights are used on x86 with oneDNN only"
)
def test_packed_linears_compute_the_same_products_for_one_call_only(ctx):
    """On CPU in fp32 every nn.Linear (the lm_head too) runs from its oneDNN-prepacked weight
    during a generate() call: the same products up to fp32 rounding, for any rows and with a
    bias; after the call each Linear is the plain module again. A bf16 model is left alone."""
    model, tok = ctx
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert any(m.bias is not None for m in linears)  # Qwen2's q/k/v projections
    x = {m: torch.randn(3, 5, m.in_features) for m in linears}  # [3, 5, in]
    plain = {m: m(x[m]) for m in linears}
    with G._packed_linears(model, rows=4):
        assert all("forward" in vars(m) for m in linears)
        for m in linears:
            torch.testing.assert_close(m(x[m]), plain[m], rtol=1e-5, atol=1e-5)
    assert not any("forward" in vars(m) for m in linears)

    seen = []
    hook = model.get_output_embeddings().register_forward_hook(lambda *a: seen.append(1))
    try:  # the head is called (through its packed weight) at every forward: prefill, 2 decodes
        G.generate(model, tok, [chat_prompt(tok, "1+1?")], greedy=True, max_new_tokens=3)
    finally:
        hook.remove()
    assert len(seen) == 3 and not any("forward" in vars(m) for m in linears)
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    with G._packed_linears(bf16, rows=4):
        assert not any("forward" in vars(m) for m in bf16.modules())


# ----------------------------------------------------------------------------- the decode loop


def count_host_reads():
    """A hook counting device-to-host reads (tolist, item, cpu, bool/int/float of a tensor)."""
    names = ("tolist", "item", "cpu", "__bool__", "__int__", "__float__")
    saved = {n: getattr(torch.Tensor, n) for n in names}
    counts = [0]

    def wrap(orig):
        def f(self, *a, **kw):
            counts[0] += 1
            return orig(self, *a, **kw)

        return f

    for n in names:
        setattr(torch.Tensor, n, wrap(saved[n]))
    return counts, lambda: [setattr(torch.Tensor, n, f) for n, f in saved.items()]


def test_host_reads_rows_only_every_few_steps_and_completions_do_not_change(ctx):
    """The decode step runs on the device: the host reads which rows finished only every
    sync_every steps (counted by a hook on every device-to-host read, prefill and admission
    included) and the completions are those of reading at every step; rows that finished
    between reads are computed and ignored until the read."""
    model, tok = ctx
    prompts = [
        tok(chat_prompt(tok, q), add_special_tokens=False)["input_ids"] for q in questions(5)
    ]
    with torch.no_grad():  # as generate() calls it
        free = G._decode(model, prompts, 1, [12] * 5, 8, True, 1.0, [-5], tok.pad_token_id)[0]
    eos = [free[0][0][3], free[2][0][6]]  # rows end at different steps
    runs = {}
    for every in (1, 4):
        counts, restore = count_host_reads()
        try:
            with torch.no_grad():
                runs[every] = G._decode(model, prompts, 3, [12] * 5, 4, True, 1.0, eos,
                                        tok.pad_token_id, sync_every=every)  # fmt: skip
        finally:
            restore()
        stats = runs[every][1]
        assert counts[0] == stats["host_syncs"]  # the engine's own count is every read
        polls = -(-stats["decode_steps"] // every) + 1
        assert stats["host_syncs"] <= 2 * polls  # a read per poll, one more when rows finished
    assert runs[1][0] == runs[4][0]
    assert len({len(t) for t, _, _ in runs[1][0]}) > 1  # ragged
    assert runs[4][1]["host_syncs"] < runs[1][1]["host_syncs"] / 2
    assert runs[4][1]["row_steps"] > runs[1][1]["row_steps"]  # finished rows until the read


# ----------------------------------------------------------------------------- architectures


class IdTokenizer:
    """Prompts written as token ids ("5 17 3"): the arch_model tests need no vocabulary."""

    pad_token_id = eos_token_id = 0

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[int(x) for x in t.split()] for t in texts]}

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


def id_prompts(lengths, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [" ".join(map(str, torch.randint(3, 300, (n,), generator=g).tolist())) for n in lengths]


def generate_reference(model, prompts, max_new, eos):
    """transformers' generate, greedy, one left-padded batch (pad 0), cut after the first EOS."""
    ids = [[int(x) for x in p.split()] for p in prompts]
    P = max(map(len, ids))
    x = torch.tensor([[0] * (P - len(p)) + p for p in ids])
    mask = (torch.arange(P)[None] >= torch.tensor([P - len(p) for p in ids])[:, None]).long()
    with torch.no_grad():
        out = model.generate(input_ids=x, attention_mask=mask, do_sample=False,
                             max_new_tokens=max_new, eos_token_id=list(eos), pad_token_id=0,
                             top_k=None, top_p=None, temperature=None)[:, P:].tolist()  # fmt: skip
    return [r[: next((t + 1 for t, v in enumerate(r) if v in eos), len(r))] for r in out]


@pytest.mark.parametrize(
    "name", ["qwen2", "llama", "mistral-window", "qwen2-window", "gemma2", "granite"]
)
def test_greedy_equals_generate_on_architectures(name):
    """Prompts of 9, 4, 13 and 7 tokens (longer than the windows of 6), two rows for four
    sequences (rows leave and are refilled), 8 new tokens: the engine's greedy completions are
    generate's, token for token. Sliding windows (Mistral: every layer; Qwen2: the layers past
    max_window_layers; Gemma 2: every other layer) are in the engine's masks, one per layer
    type; Gemma 2's and Granite's logit transforms come from the model's own forward."""
    from conftest import arch_model

    model = arch_model(name)
    prompts = id_prompts((9, 4, 13, 7))
    free = generate_reference(model, prompts, 8, [-5])
    eos = [free[0][4], free[2][2]]  # rows end at different steps
    out = G.generate(model, IdTokenizer(), prompts, greedy=True, max_new_tokens=8, batch_size=2,
                     eos_ids=eos)  # fmt: skip
    assert [o["completion_ids"] for o in out] == generate_reference(model, prompts, 8, eos)
    assert len({len(o["completion_ids"]) for o in out}) > 1


def test_dynamic_ntk_exact_within_the_original_context_and_refused_beyond():
    """Dynamic-NTK RoPE rescales with the batch's longest position past max_position_embeddings
    (12 here), so there a row would depend on its batchmates: generation within 12 tokens equals
    generate's; past it, a one-line refusal naming the feature and the model, before any
    forward."""
    from conftest import arch_model

    model = arch_model("llama-dynamic-ntk")
    prompts = id_prompts((5, 3, 6))
    out = G.generate(model, IdTokenizer(), prompts, greedy=True, max_new_tokens=6, batch_size=2,
                     eos_ids=[-5])  # fmt: skip
    assert [o["completion_ids"] for o in out] == generate_reference(model, prompts, 6, [-5])
    with pytest.raises(G.UnsupportedModelError, match="dynamic NTK.*llama|llama.*dynamic NTK"):
        G.generate(model, IdTokenizer(), prompts, greedy=True, max_new_tokens=8, eos_ids=[-5])


# ----------------------------------------------------------------------------- memory plan


def test_kv_bytes_per_token_and_the_default_rows_fit_an_80gb_card():
    """Qwen2.5-Math-1.5B's KV cache in bf16: 2 x 28 layers x 2 KV heads x 128 x 2 bytes =
    28 KiB a token. At the paper's settings (sequences of up to 4,096 tokens) the default
    --generation-batch-size fits an 80 GB card (79.1 GiB usable) beside the fp32 weights, AdamW's
    moments and the bf16 copy, with 10% of the card kept free (docs/engine.md): the plan keeps
    all its rows there, and takes fewer on a 40 GB card."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(TOKENIZER_DIR)
    assert G.kv_bytes_per_token(config, torch.bfloat16) == 28 * 1024
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    n = sum(p.numel() for p in model.parameters())  # 1.54e9
    rows = hdpo.build_parser().get_default("generation_batch_size")

    def plan(card_gib):  # as setup_run: 90% of the card - fp32 weights - AdamW's two moments
        return G.plan_generation(model, rows, 4096, 0.9 * card_gib * 2**30 - 4 * n - 8 * n)[0]

    assert plan(79.1) == rows and plan(39.4) < rows


def test_plan_generation_arithmetic():
    model = small_model()
    cfg = model.config
    per_row = 4096 * (G.kv_bytes_per_token(cfg, torch.bfloat16) + 8) + 3 * cfg.vocab_size * 4
    copy = 2 * sum(p.numel() for p in model.parameters())
    assert G.plan_generation(model, 64, 4096, copy + 10 * per_row)[0] == 10
    rows, line = G.plan_generation(model, 8, 4096, copy + 10 * per_row)
    assert rows == 8 and "--generation-batch-size 8" in line
