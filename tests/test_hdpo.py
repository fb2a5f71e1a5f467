"""The paper's claims about the algorithm, tested directly (hdpo.py)."""

import hashlib
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from conftest import DATA, ROOT

import hdpo
import plumbing

LN2 = math.log(2.0)


# ---------------------------------------------------------------- advantages and cliffs


def test_leave_one_out_advantages_by_hand():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    # A_i = r_i - mean of the other three rewards
    want = torch.tensor(
        [[1 - 1 / 3, 0 - 2 / 3, 0 - 2 / 3, 1 - 1 / 3], [1 - 0, 0 - 1 / 3, 0 - 1 / 3, 0 - 1 / 3]]
    )
    assert torch.allclose(hdpo.group_advantages(r, "loo"), want)


def test_grpo_advantages_are_standardised_within_the_group():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    std = torch.tensor([1.0, 0.0, 0.0, 1.0]).std()  # unbiased, as torch.std
    want = (r - 0.5) / (std + 1e-4)
    assert torch.allclose(hdpo.group_advantages(r, "grpo"), want)


def test_cliff_and_solved_groups_have_zero_advantage():
    r = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    for kind in ("loo", "grpo"):
        a = hdpo.group_advantages(r, kind)
        assert torch.all(a[:2] == 0) and torch.any(a[2] != 0)


def test_find_cliffs_marks_exactly_the_all_fail_prompts():
    r = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    assert hdpo.find_cliffs(r).tolist() == [True, False, False, True]


def test_r1_filter_keeps_exactly_the_correct_privileged_rollouts():
    from verify import reward

    texts = [
        "so \\boxed{5}",
        "hence \\boxed{6}",
        "the answer is \\boxed{\\frac{10}{2}}",
        "no answer",
    ]
    assert hdpo.r1_filter(texts, ["5"] * 4, reward) == [True, False, True, False]


# ---------------------------------------------------------------- prompts


def test_privileged_prompt_holds_the_answer_and_the_plain_prompt_does_not(tiny_qwen_dir):
    from transformers import AutoTokenizer

    from data import chat_prompt

    tok = AutoTokenizer.from_pretrained(tiny_qwen_dir)
    problem, answer = "Compute $1/2 + 1/3$.", "\\frac{5}{6}"
    plain = chat_prompt(tok, problem)
    priv = chat_prompt(tok, hdpo.privileged_prompt(problem, answer))
    assert answer not in plain and problem in plain
    assert answer in priv and problem in priv  # braces survive: str.replace, not str.format
    assert len(tok(priv).input_ids) > len(tok(plain).input_ids)
    with_solution = hdpo.privileged_prompt(problem, answer, solution="Add: 3/6 + 2/6 = {5/6}.")
    assert "3/6 + 2/6 = {5/6}" in with_solution and answer in with_solution


# ---------------------------------------------------------------- JSD_k


def full_jsd_float64(student_logits, teacher_logits, k):
    """Reference: the truncated teacher as a full-vocabulary distribution, float64, 0·log 0 = 0."""
    s, t = student_logits.double(), teacher_logits.double()
    vals, idx = t.topk(k, -1)
    p = torch.zeros_like(t).scatter(-1, idx, vals.softmax(-1))
    q = s.softmax(-1)
    m = 0.5 * (p + q)
    kl = lambda a, b: torch.where(a > 0, a * (a.log() - b.log()), torch.zeros_like(a)).sum(-1)
    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def test_jsd_topk_equals_full_jsd_when_k_is_vocab():
    torch.manual_seed(0)
    s, t = torch.randn(3, 5, 50) * 3, torch.randn(3, 5, 50) * 3
    got = hdpo.jsd_topk(s, t, k=50)
    assert got.shape == (3, 5)
    assert torch.allclose(got.double(), full_jsd_float64(s, t, 50), atol=1e-6)


@pytest.mark.parametrize("k", [1, 4, 64])
def test_jsd_topk_matches_float64_reference_with_gradient(k):
    torch.manual_seed(k)
    s = (torch.randn(7, 300) * 4).requires_grad_()
    s64 = s.detach().double().requires_grad_()
    t = torch.randn(7, 300) * 4
    got = hdpo.jsd_topk(s, t, k=k)
    ref = full_jsd_float64(s64, t, k)
    assert torch.allclose(got.double(), ref, atol=1e-6)
    got.sum().backward()
    ref.sum().backward()
    assert torch.allclose(s.grad.double(), s64.grad, atol=1e-6)


def test_jsd_topk_is_bounded_by_ln2_and_zero_when_distributions_match():
    torch.manual_seed(1)
    s, t = torch.randn(100, 80) * 10, torch.randn(100, 80) * 10
    j = hdpo.jsd_topk(s, t, k=8)
    assert torch.all(j >= -1e-6) and torch.all(j <= LN2 + 1e-6)
    assert torch.allclose(hdpo.jsd_topk(t, t, k=80), torch.zeros(100), atol=1e-6)


def test_jsd_teacher_gets_no_gradient():
    s = torch.randn(4, 30, requires_grad=True)
    t = torch.randn(4, 30, requires_grad=True)
    hdpo.jsd_topk(s, t, k=5).sum().backward()
    assert t.grad is None and s.grad is not None and s.grad.abs().sum() > 0


# ---------------------------------------------------------------- losses on a real (tiny) model


def small_model(seed=0, vocab=300):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    return Qwen2ForCausalLM(cfg).float()


def loss_args(**kw):
    a = hdpo.parse_args(
        [
            "--micro-batch-tokens",
            "16",
            "--logit-chunk",
            "5",
            "--topk",
            "16",
            "--distill-weight",
            "0.3",
        ]
    )
    for k, v in kw.items():
        setattr(a, k, v)
    return a


SEQS = [
    ([5, 6, 7], [8, 9, 10, 11]),
    ([5, 6], [12, 13]),
    ([20, 21, 22, 23], [24, 25, 26]),
    ([30], [31, 32, 33, 34, 35]),
]
ADV = [0.5, -1.0, 0.0, 2.0]
PAIRS = [
    ([5, 6], [40, 41, 5, 6], [8, 9, 10]),
    ([7], [42, 7], [11, 12, 13, 14]),
    ([9, 9], [43, 9, 9], [15]),
]
# Groups: rollouts that continue the same prompt (G per prompt in training), forwarded with one
# shared prompt pass; a cliff's privileged rollouts share x and x ⊕ y*.
GROUP_SEQS = [
    ([5, 6, 7], [8, 9, 10, 11]),
    ([5, 6, 7], [12]),
    ([5, 6, 7], [13, 14, 15]),
    ([20, 21], [24, 25, 26, 27, 28]),
    ([20, 21], [29, 30]),
    ([30], [31, 32]),
]
GROUP_ADV = [0.5, -1.0, 0.25, 2.0, -0.5, 1.0]
GROUP_PAIRS = [
    ([5, 6], [40, 41, 5, 6], [8, 9, 10]),
    ([5, 6], [40, 41, 5, 6], [11]),
    ([7], [42, 7], [11, 12, 13, 14]),
    ([7], [42, 7], [15, 16]),
]


def grads(model):
    return {
        n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
        for n, p in model.named_parameters()
    }


def naive_logits(model, prompt, completion):
    """Full-vocabulary logits at the positions predicting each completion token."""
    ids = torch.tensor([list(prompt) + list(completion)])
    logits = model(input_ids=ids).logits[0]  # [L, V]
    return logits[len(prompt) - 1 : len(prompt) + len(completion) - 1]  # [|c|, V]


@pytest.mark.parametrize(
    "seqs, advs", [(SEQS, ADV), (GROUP_SEQS, GROUP_ADV)], ids=["alone", "groups"]
)
def test_chunked_grpo_loss_and_gradient_equal_full_vocabulary_computation(seqs, advs):
    model, args = small_model(), loss_args()
    n = sum(len(c) for _, c in seqs)
    loss = hdpo.grpo_backward(model, seqs, advs, n, args, torch.device("cpu"))
    got = grads(model)
    model.zero_grad(set_to_none=True)
    ref = 0.0
    for (p, c), a in zip(seqs, advs):
        logp = naive_logits(model, p, c).log_softmax(-1).gather(-1, torch.tensor(c)[:, None])[:, 0]
        ratio = torch.exp(logp - logp.detach())
        ref = ref + (-torch.min(ratio * a, ratio.clamp(0.8, 1.2) * a)).sum() / n
    ref.backward()
    assert abs(loss - ref.item()) < 1e-6
    for k, g in grads(model).items():
        assert torch.allclose(got[k], g, atol=1e-6), k


@pytest.mark.parametrize("pairs", [PAIRS, GROUP_PAIRS], ids=["alone", "groups"])
def test_chunked_jsd_loss_and_gradient_equal_full_vocabulary_computation(pairs):
    model, args = small_model(), loss_args()
    n = sum(len(y) for *_, y in pairs)
    loss = hdpo.jsd_backward(model, model, pairs, n, args, torch.device("cpu"))
    got = grads(model)
    model.zero_grad(set_to_none=True)
    ref = 0.0
    for s, t, y in pairs:
        with torch.no_grad():
            tl = naive_logits(model, t, y)
        ref = ref + full_jsd_float64(naive_logits(model, s, y), tl, args.topk).sum() / n
    (args.distill_weight * ref).backward()
    assert abs(loss - ref.item()) < 1e-5
    for k, g in grads(model).items():
        assert torch.allclose(got[k], g, atol=1e-6), k


@pytest.mark.parametrize("micro_batch_tokens", [1, 9, 20])
def test_step_gradient_does_not_depend_on_micro_batch_tokens(micro_batch_tokens):
    def run(tokens):
        model = small_model()
        args = loss_args(micro_batch_tokens=tokens)
        hdpo.grpo_backward(model, SEQS + GROUP_SEQS, ADV + GROUP_ADV, 31, args, "cpu")
        hdpo.jsd_backward(model, model, PAIRS + GROUP_PAIRS, 18, args, "cpu")
        return grads(model)

    a, b = run(10**6), run(micro_batch_tokens)  # one micro-batch vs several
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-7), k


@pytest.mark.parametrize("tokens", [1, 7, 12, 40])
def test_micro_batches_hold_every_sequence_once_within_the_token_budget(tokens):
    prompts, owner = hdpo.grouped([p for p, _ in GROUP_SEQS + SEQS])
    comp_lens = [len(c) for _, c in GROUP_SEQS + SEQS]
    prompt_lens = [len(p) for p in prompts]
    for shared in (True, False):
        batches = hdpo.pack_micro_batches(prompt_lens, comp_lens, owner, tokens, shared)
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
    prompts, owner = hdpo.grouped([p for p, _ in GROUP_SEQS])
    comps = [c for _, c in GROUP_SEQS]
    out = {}
    for shared in (True, False):
        model = small_model()
        hidden, targets = hdpo.completion_hidden(model, prompts, comps, owner, "cpu", shared)
        (hidden * torch.linspace(-1, 1, hidden.shape[-1])).sum().backward()
        out[shared] = hidden.detach(), targets, grads(model)
    assert torch.equal(out[True][1], out[False][1])
    assert torch.allclose(out[True][0], out[False][0], atol=1e-5)
    for k, g in out[False][2].items():
        assert torch.allclose(out[True][2][k], g, atol=1e-5), k


def test_cliff_prompt_gets_no_grpo_gradient_and_a_nonzero_hdpo_gradient():
    model, args = small_model(), loss_args()
    cliff = [SEQS[0], SEQS[1]]  # two rollouts of one prompt, both failed
    adv = hdpo.group_advantages(torch.zeros(1, 2)).flatten().tolist()
    hdpo.grpo_backward(model, cliff, adv, 6, args, torch.device("cpu"))
    assert all(g.abs().sum() == 0 for g in grads(model).values())
    hdpo.jsd_backward(
        model, model, PAIRS[:1], 3, args, torch.device("cpu")
    )  # its correct privileged rollout
    assert sum(g.abs().sum() for g in grads(model).values()) > 0


def test_frozen_teacher_gets_no_gradient_in_jsd_backward():
    model, teacher, args = small_model(0), small_model(1), loss_args()
    teacher.requires_grad_(False)
    hdpo.jsd_backward(model, teacher, PAIRS, 8, args, torch.device("cpu"))
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


# ---------------------------------------------------------------- the training loop


def hash_reward(text, answer):
    """Deterministic pseudo-random 0/1 reward: a random model never earns a real one."""
    return float(hashlib.sha256(text.encode()).digest()[0] % 3 == 0)


def train_args(model_dir, out, *extra):
    return hdpo.parse_args(
        [
            "--model",
            model_dir,
            "--dataset",
            os.path.join(DATA, "openmathinstruct2_sample.jsonl"),
            "--prompts-per-step",
            "3",
            "--num-generations",
            "2",
            "--max-new-tokens",
            "8",
            "--eval-every",
            "0",
            "--output-dir",
            str(out),
            "--lr",
            "1e-3",
            "--warmup-steps",
            "0",
            "--samples-per-step",
            "1000",
            *extra,
        ]
    )


def rows(n=12):
    with open(os.path.join(DATA, "openmathinstruct2_sample.jsonl")) as f:
        data = [json.loads(ln) for ln in f][:n]
    return [
        {
            "problem": r["problem"],
            "answer": r["expected_answer"],
            "solution": r["generated_solution"],
        }
        for r in data
    ]


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(ln) for ln in f]


def test_lambda_zero_is_exactly_grpo(tiny_qwen_dir, tmp_path):
    """One λ = 0 step of train() equals a hand-written GRPO step: same rollouts, full-vocabulary
    log-softmax loss, clip, AdamW at 0.1 x lr (the first warm-up step)."""
    from data import chat_prompt
    from engine import eos_token_ids, generate
    from plumbing import load_model

    args = train_args(
        tiny_qwen_dir,
        tmp_path / "run",
        "--distill-weight",
        "0",
        "--max-steps",
        "1",
        "--warmup-steps",
        "10",
    )
    data = rows()
    hdpo.train(args, train_rows=data, val_rows=[], reward_fn=hash_reward)
    trained, _ = load_model(str(tmp_path / "run" / "final"), device="cpu", dtype=torch.float32)

    model, tok = load_model(tiny_qwen_dir, device="cpu", dtype=torch.float32)
    batch = [data[i] for i in hdpo.prompt_stream(len(data), 0, 3, args.seed)]
    torch.manual_seed(args.seed)
    outs = generate(
        model,
        tok,
        [chat_prompt(tok, r["problem"]) for r in batch],
        num_samples=2,
        temperature=1.0,
        max_new_tokens=8,
        batch_size=args.generation_batch_size,
        max_seq_len=4096,
        eos_ids=eos_token_ids(tok, model),
    )
    r = torch.tensor(
        [hash_reward(o["text"], batch[i // 2]["answer"]) for i, o in enumerate(outs)]
    ).view(3, 2)
    assert 0 < r.sum() < 6, "the test needs some non-zero advantages"
    adv = hdpo.group_advantages(r).flatten()
    n = sum(len(o["completion_ids"]) for o in outs)
    loss = (
        sum(
            -adv[i]
            * naive_logits(model, o["prompt_ids"], o["completion_ids"])
            .log_softmax(-1)
            .gather(-1, torch.tensor(o["completion_ids"])[:, None])
            .sum()
            for i, o in enumerate(outs)
        )
        / n
    )
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01).step()
    want, got = dict(model.named_parameters()), dict(trained.named_parameters())
    init = dict(load_model(tiny_qwen_dir, device="cpu", dtype=torch.float32)[0].named_parameters())
    for k in want:
        assert torch.allclose(got[k], want[k], atol=1e-6), k
    assert any(not torch.equal(got[k], init[k]) for k in want), "the step must move the weights"
    m = read_jsonl(tmp_path / "run" / "metrics.jsonl")[0]
    assert m["privileged_rollouts"] == 0 and m["loss_jsd"] == 0.0


def test_training_loop_distils_exactly_the_r1_privileged_rollouts_and_frozen_teacher_stays(
    tiny_qwen_dir, tmp_path
):
    args = train_args(
        tiny_qwen_dir,
        tmp_path / "run",
        "--distill-weight",
        "1.0",
        "--teacher",
        "frozen",
        "--max-steps",
        "3",
        "--privileged-generations",
        "3",
    )
    out = hdpo.train(args, train_rows=rows(), val_rows=[], reward_fn=hash_reward)
    assert out["steps"] == 3
    metrics = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    samples = read_jsonl(tmp_path / "run" / "samples.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3]
    for m in metrics:
        priv = [s for s in samples if s["step"] == m["step"] and s["kind"] == "privileged"]
        assert len(priv) == m["privileged_rollouts"] == 3 * m["num_cliffs"]
        assert m["distill_sequences"] == sum(s["reward"] == 1.0 for s in priv)  # R = 1 filter
        assert (m["distill_tokens"] > 0) == (m["distill_sequences"] > 0)
        assert (m["loss_jsd"] > 0) == (m["distill_sequences"] > 0)
    assert sum(m["distill_sequences"] for m in metrics) > 0, "the test needs some distillation"
    from plumbing import load_model

    ckpt = plumbing.find_checkpoint("latest", str(tmp_path / "run"))
    init = load_model(tiny_qwen_dir, device="cpu")[0].state_dict()
    teacher = load_model(os.path.join(ckpt, "teacher"), "cpu", tokenizer=False)[0].state_dict()
    policy = load_model(os.path.join(ckpt, "model"), device="cpu")[0].state_dict()
    assert all(torch.equal(teacher[k], init[k]) for k in init)  # frozen: the initial weights
    assert any(not torch.equal(policy[k], init[k]) for k in init)  # the policy moved


def test_drifting_teacher_is_the_current_policy(tiny_qwen_dir, tmp_path):
    args = train_args(
        tiny_qwen_dir,
        tmp_path / "run",
        "--distill-weight",
        "1.0",
        "--teacher",
        "drifting",
        "--max-steps",
        "1",
    )
    hdpo.train(args, train_rows=rows(), val_rows=[], reward_fn=hash_reward)
    ckpt = plumbing.find_checkpoint("latest", str(tmp_path / "run"))
    assert not os.path.exists(os.path.join(ckpt, "teacher"))  # no copy: the teacher is π_θ itself


def test_warmup_goes_linearly_from_a_tenth_to_full_lr(tiny_qwen_dir, tmp_path):
    args = train_args(
        tiny_qwen_dir,
        tmp_path / "run",
        "--distill-weight",
        "0",
        "--max-steps",
        "3",
        "--warmup-steps",
        "2",
    )
    hdpo.train(args, train_rows=rows(), val_rows=[], reward_fn=hash_reward)
    lrs = [m["lr"] for m in read_jsonl(tmp_path / "run" / "metrics.jsonl")]
    assert lrs == pytest.approx([1e-4, 5.5e-4, 1e-3])


@pytest.mark.parametrize(
    "flag,value",
    [
        ("--num-generations", "1"),
        ("--topk", "0"),
        ("--distill-weight", "-0.1"),
        ("--lr", "0"),
        ("--eval-k", "16"),
        ("--teacher", "other"),
    ],
)
def test_invalid_flag_values_are_argparse_errors(flag, value, capsys):
    with pytest.raises(SystemExit) as e:
        hdpo.parse_args([flag, value])
    assert e.value.code == 2
    assert flag.lstrip("-").split("-")[0] in capsys.readouterr().err


def test_offline_end_to_end_run_on_random_qwen(tiny_qwen_dir, tmp_path):
    """The issue's command: every prompt is a cliff, no privileged rollout succeeds, losses are
    0."""
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        os.path.join(ROOT, "hdpo.py"),
        "--model",
        tiny_qwen_dir,
        "--dataset",
        os.path.join(DATA, "openmathinstruct2_sample.jsonl"),
        "--max-steps",
        "2",
        "--prompts-per-step",
        "2",
        "--num-generations",
        "4",
        "--max-new-tokens",
        "16",
        "--eval-every",
        "0",
        "--output-dir",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = read_jsonl(out / "metrics.jsonl")
    assert len(metrics) == 2
    fields = [
        "step",
        "step_time_s",
        "reward_mean",
        "cliff_fraction",
        "num_cliffs",
        "privileged_pass_rate",
        "distill_sequences",
        "distill_tokens",
        "loss_grpo",
        "loss_jsd",
        "grad_norm",
        "lr",
    ]
    for m in metrics:
        assert all(f in m for f in fields)
        assert (
            m["cliff_fraction"] == 1.0 and m["num_cliffs"] == 2 and m["privileged_pass_rate"] == 0.0
        )
        assert m["distill_sequences"] == 0 and m["loss_grpo"] == 0.0 and m["loss_jsd"] == 0.0
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(str(out / "final")) is not None
    assert "step 2/2" in proc.stdout


# ---------------------------------------------------------------- long prompts (issue 12)


def long_row(words=3000):
    return {"problem": "Compute " + "x + " * words + "1.", "answer": "1", "solution": None}


def test_max_cliffs_counts_only_cliffs_that_can_be_distilled(monkeypatch, tiny_qwen_dir):
    """Cliffs whose privileged prompt x ⊕ y* leaves no room under --max-seq-len are skipped and
    counted, and --max-cliffs picks among the ones that fit (not the first cliffs overall)."""
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_qwen_dir)
    batch = rows(4)
    for r in batch[:2]:  # their answers make x ⊕ y* too long; x itself fits
        r["answer"] = "1" + " + 0" * 400
    args = train_args(tiny_qwen_dir, "/tmp/unused", "--max-cliffs", "2", "--max-seq-len", "600")
    args.distill_weight, seen = 1.0, []

    def stub_generate(model, tokenizer, prompts, num_samples, **kw):
        seen.extend(prompts)
        return [{"text": "", "prompt_ids": [], "completion_ids": []}] * (len(prompts) * num_samples)

    monkeypatch.setattr(hdpo, "generate", stub_generate)
    n_tokens = lambda text: len(tok(text, add_special_tokens=False).input_ids)
    run = SimpleNamespace(args=args, tokenizer=tok, n_tokens=n_tokens, world_size=1, model=None,
                          amp=lambda: __import__("contextlib").nullcontext(), gen={},
                          step_long_prompts=0)  # fmt: skip
    owners, out = hdpo.privileged_rollouts(run, batch, torch.tensor([True] * 4))
    assert sorted(set(owners)) == [2, 3]  # the two distillable cliffs, though 0 and 1 come first
    assert run.step_long_prompts == 2 and len(out) == 2 * args.privileged_generations
    assert all(batch[i]["problem"] in p for i, p in zip([2, 3], seen))


def test_long_training_and_validation_prompts_are_skipped_and_counted(tiny_qwen_dir, tmp_path):
    """A training prompt and a validation problem longer than --max-seq-len: no crash, both
    skipped and counted (metrics.jsonl, eval.jsonl), the rest trained and validated."""
    args = train_args(tiny_qwen_dir, tmp_path, "--max-steps", "1", "--prompts-per-step", "4",
                      "--eval-every", "1", "--eval-n", "2", "--eval-k", "1", "2",
                      "--max-seq-len", "1024")  # fmt: skip
    train_rows = [long_row()] * 8 + rows(8)  # the stream is seeded: count the long ones drawn
    first = [train_rows[i] for i in hdpo.prompt_stream(len(train_rows), 0, 4, args.seed)]
    n_long = sum(r["problem"].startswith("Compute x") for r in first)
    assert 0 < n_long < 4
    hdpo.train(args, train_rows=train_rows, val_rows=rows(3) + [long_row()], reward_fn=hash_reward)
    metrics = [json.loads(ln) for ln in open(tmp_path / "metrics.jsonl")]
    assert metrics[0]["skipped_long_prompts"] == n_long
    assert metrics[0]["num_prompts"] == 4 - n_long
    ev = [json.loads(ln) for ln in open(tmp_path / "eval.jsonl")]
    assert ev[0]["skipped_long_prompts"] == 1 and ev[0]["n_problems"] == 3
    assert ev[0]["greedy"] is not None


# ---------------------------------------------------------------- re-injection (issue 15)
# PAPER.md, "Future work the paper names": re-inject former cliff prompts into RL after a delay.


def test_reinject_take_waits_the_delay_caps_and_takes_the_oldest_first():
    queue = [(3, 9), (1, 5), (2, 7), (1, 4)]  # (step distilled, training-row index)
    take = hdpo.reinject_take
    assert take(queue, 2, 2, 8) == ([], queue)  # distilled at step 1: due at step 3, not before
    assert take(queue, 3, 2, 8) == ([5, 4], [(3, 9), (2, 7)])  # step 1's, in queue order
    assert take(queue, 3, 2, 1) == ([5], [(3, 9), (2, 7), (1, 4)])  # the cap; the oldest first
    assert take(queue, 4, 2, 3) == ([5, 4, 7], [(3, 9)])  # step 1's before step 2's
    assert take(queue, 9, 1, 8) == ([5, 4, 7, 9], [])
    assert take([], 5, 1, 8) == ([], [])


def test_reinject_enqueue_appends_in_order_once_per_prompt():
    enqueue = hdpo.reinject_enqueue
    assert enqueue([], [6, 2, 6], 4) == [(4, 6), (4, 2)]  # one entry per prompt, in order
    # prompt 2 is still queued (distilled again before its re-injection): it keeps its place
    assert enqueue([(1, 2)], [3, 2], 5) == [(1, 2), (5, 3)]
    assert enqueue([(1, 2)], [], 5) == [(1, 2)]


def test_reinjected_prompt_that_is_distilled_again_is_queued_again():
    """Prompt 4 distilled at step 1 (delay 2) returns at step 3; a cliff again there and distilled
    again, it is queued with step 3 and returns at step 5; prompt 8 (distilled at step 3 while 4
    was out of the queue) comes out with it, after it."""
    q = hdpo.reinject_enqueue([], [4], 1)
    again, q = hdpo.reinject_take(q, 2, 2, 4)
    assert again == [] and q == [(1, 4)]
    again, q = hdpo.reinject_take(q, 3, 2, 4)
    assert again == [4] and q == []
    q = hdpo.reinject_enqueue(q, [4, 8], 3)  # step 3: re-injected 4 was a cliff, distilled again
    assert hdpo.reinject_take(q, 4, 2, 4) == ([], [(3, 4), (3, 8)])
    assert hdpo.reinject_take(q, 5, 2, 4) == ([4, 8], [])


@pytest.mark.parametrize("flags", [["--reinject-delay", "-1"], ["--reinject-max", "0"]])
def test_invalid_reinject_flags_are_argparse_errors(flags, capsys):
    with pytest.raises(SystemExit) as e:
        hdpo.parse_args(flags)
    assert e.value.code == 2 and flags[0] in capsys.readouterr().err


def run_short(model_dir, out, *flags, steps=3):
    """hdpo.train for `steps` steps on rows(); -> (metrics rows, samples, final weights, trainer
    state of the end-of-run checkpoint)."""
    from plumbing import load_model

    args = train_args(model_dir, out, "--max-steps", str(steps), "--privileged-generations", "2",
                      *flags)  # fmt: skip
    hdpo.train(args, train_rows=rows(), val_rows=[], reward_fn=hash_reward)
    weights = load_model(str(out / "final"), device="cpu", dtype=torch.float32)[0].state_dict()
    ckpt = plumbing.find_checkpoint("latest", str(out))
    trainer = torch.load(os.path.join(ckpt, "trainer.pt"), weights_only=False)
    return read_jsonl(out / "metrics.jsonl"), read_jsonl(out / "samples.jsonl"), weights, trainer


REINJECT_KEYS = ("reinjected", "reinjected_solved", "reinjected_cliffs", "reinject_queued")


@pytest.mark.parametrize(
    "base,off",
    [
        (["--distill-weight", "1"], ["--reinject-delay", "0", "--reinject-max", "2"]),
        (["--distill-weight", "0"], ["--reinject-delay", "1", "--reinject-max", "2"]),
    ],
    ids=["delay 0", "lambda 0"],
)
def test_reinjection_off_is_exactly_the_run_without_the_flags(tiny_qwen_dir, tmp_path, base, off):
    """--reinject-delay 0 (λ = 1), or λ = 0 with a delay (nothing is ever distilled, so nothing is
    queued): the same rollouts, rewards, losses, gradient norms, data position and final weights
    as the same run without the flags."""
    want = run_short(tiny_qwen_dir, tmp_path / "plain", *base)
    got = run_short(tiny_qwen_dir, tmp_path / "off", *base, *off)
    if base[1] == "1":
        assert sum(m["distill_sequences"] for m in want[0]) > 0, "the test needs distillation"
    assert any(m["grad_norm"] > 0 for m in want[0]), "the test needs updates"
    timed = lambda k: k.endswith("_time_s")
    for w, g in zip(want[0], got[0]):
        if off[1] != "0":  # λ = 0 with a delay: the counters are logged, and all zero
            assert all(g.pop(k) == 0 for k in REINJECT_KEYS + ("reinject_queue",)), g
        assert {k: v for k, v in g.items() if not timed(k)} == {
            k: v for k, v in w.items() if not timed(k)
        }
    assert len(got[0]) == len(want[0]) == 3 and got[1] == want[1]  # metrics, samples
    assert all(torch.equal(got[2][k], want[2][k]) for k in want[2])  # final weights
    assert got[3]["data_pos"] == want[3]["data_pos"] == 3 * 3 and got[3]["reinject_queue"] == []


def test_reinjected_prompts_return_after_the_delay_in_place_of_deferred_fresh_ones(
    tiny_qwen_dir, tmp_path
):
    """The loop against the pure functions: each step's prompts (from samples.jsonl, which holds
    every rollout) are the next P - k prompts of the stream, deferred, not dropped, followed by the
    k prompts reinject_take gives from a queue fed by the prompts distilled (an R = 1 privileged
    rollout) at each step; the logged counts and the checkpointed queue and stream position
    agree."""
    D, M, P, G, steps = 1, 2, 3, 2, 5
    metrics, samples, _, trainer = run_short(
        tiny_qwen_dir, tmp_path, "--distill-weight", "1", "--reinject-delay", str(D),
        "--reinject-max", str(M), steps=steps,
    )  # fmt: skip
    data = rows()
    index = {r["problem"]: i for i, r in enumerate(data)}
    assert len(index) == len(data)
    queue, pos, n_again = [], 0, 0
    for m in metrics:
        s = m["step"]
        again, queue = hdpo.reinject_take(queue, s, D, M)
        fresh = hdpo.prompt_stream(len(data), pos, P - len(again), 42)
        pos += P - len(again)
        plain = [x for x in samples if x["step"] == s and x["kind"] == "plain"]
        assert [index[x["problem"]] for x in plain[::G]] == fresh + again, s
        rewards = [[x["reward"] for x in plain[j * G : (j + 1) * G]] for j in range(P)]
        tail = rewards[P - len(again) :]  # the re-injected prompts' rollouts
        assert m["reinjected"] == len(again)
        assert m["reinjected_solved"] == sum(max(r) == 1 for r in tail)
        assert m["reinjected_cliffs"] == sum(max(r) == 0 for r in tail)
        priv = [x for x in samples if x["step"] == s and x["kind"] == "privileged"]
        distilled = [index[x["problem"]] for x in priv if x["reward"] == 1.0]
        new = hdpo.reinject_enqueue(queue, distilled, s)
        assert m["reinject_queued"] == len(new) - len(queue) and m["reinject_queue"] == len(new)
        queue, n_again = new, n_again + len(again)
    assert n_again > 0, "the test needs re-injected prompts"
    assert any(m["reinjected_cliffs"] for m in metrics), "the test needs a cliff again"
    assert trainer["data_pos"] == pos < steps * P and trainer["reinject_queue"] == queue


def entropy_stub(monkeypatch, value, length=None):
    """hdpo.generate with each rollout's "entropy" set to value(privileged, j, rollout) for the
    j-th rollout of a call (None: no such field, as before the engine reports one), and its
    completion cut to length(j) tokens when given. -> the calls, as (privileged?, rollouts)."""
    calls, real = [], hdpo.generate

    def generate(model, tokenizer, prompts, **kw):
        outs = real(model, tokenizer, prompts, **kw)
        privileged = any("(Hint: the correct final answer is" in p for p in prompts)
        for j, o in enumerate(outs):
            if length is not None:
                o["completion_ids"] = o["completion_ids"][: length(j)]
            o.pop("entropy", None)
            h = value(privileged, j, o)
            if h is not None:
                o["entropy"] = h
        calls.append((privileged, outs))
        return outs

    monkeypatch.setattr(hdpo, "generate", generate)
    return calls


def test_entropy_is_the_plain_rollouts_summed_entropy_over_their_tokens(
    tiny_qwen_dir, tmp_path, monkeypatch
):
    """Known per-rollout entropies in: the logged entropy is Σ entropy / Σ completion tokens over
    the step's plain rollouts; the privileged rollouts' (1e6 each here) do not count. Lengths
    differ, so a mean of per-rollout means would not pass."""
    entropy = lambda priv, j, o: 1e6 if priv else 0.25 * (j + 1)
    calls = entropy_stub(monkeypatch, entropy, length=lambda j: 1 + j % 4)
    args = train_args(
        tiny_qwen_dir, tmp_path / "run", "--distill-weight", "1.0", "--max-steps", "3"
    )
    hdpo.train(args, train_rows=rows(), val_rows=[], reward_fn=hash_reward)
    plain = [outs for privileged, outs in calls if not privileged]
    assert len(plain) == 3 and any(p for p, _ in calls), "the test needs privileged rollouts"
    metrics = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    for m, outs in zip(metrics, plain):
        tokens = [1 + j % 4 for j in range(len(outs))]
        assert [len(o["completion_ids"]) for o in outs] == tokens
        want = sum(0.25 * (j + 1) for j in range(len(outs))) / sum(tokens)
        assert m["entropy"] == pytest.approx(want, rel=1e-12)
        assert m["entropy"] != pytest.approx(
            sum(0.25 * (j + 1) / n for j, n in enumerate(tokens)) / len(tokens)
        )


def test_entropy_is_null_when_the_engine_gives_none(tiny_qwen_dir, tmp_path, monkeypatch):
    entropy_stub(monkeypatch, lambda priv, j, o: None if j == 1 else 2.0)  # one rollout lacks it
    args = train_args(tiny_qwen_dir, tmp_path / "run", "--distill-weight", "0", "--max-steps", "1")
    hdpo.train(args, train_rows=rows(), val_rows=[], reward_fn=hash_reward)
    (m,) = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert "entropy" in m and m["entropy"] is None
