"""The paper's claims about the algorithm, tested directly (hdpo.py)."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from conftest import (
    ADV,
    DATA,
    GROUP_ADV,
    GROUP_PAIRS,
    GROUP_SEQS,
    PAIRS,
    ROOT,
    SEQS,
    full_jsd_float64,
    grads,
    hash_reward,
    long_row,
    loss_args,
    naive_logits,
    read_jsonl,
    rows,
    small_model,
    train_args,
)

import hdpo
from harness.checkpoint import find_checkpoint

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


def test_two_cliffs_with_the_same_problem_text_are_distilled_from_their_own_teacher_context():
    """Issue 25, item 3: two cliffs share the plain prompt x but not x ⊕ y* (two rows of one
    problem with other answers, --privileged solution, a re-injected duplicate): each pair's
    teacher runs on its own x ⊕ y*, as the naive per-pair computation does; grouping by x alone
    (the teacher context of the group's first pair for all) gives another loss."""
    pairs = [
        ([5, 6], [40, 41, 5, 6], [8, 9, 10]),
        ([5, 6], [40, 41, 5, 6], [11, 12]),  # a second rollout of the first cliff
        ([5, 6], [43, 44, 45, 5, 6], [13, 14, 15, 16]),  # the second cliff: same x
        ([7], [42, 7], [17]),
    ]
    model, args = small_model(), loss_args(micro_batch_tokens=1000)
    n = sum(len(y) for *_, y in pairs)
    loss = hdpo.jsd_backward(model, model, pairs, n, args, torch.device("cpu"))
    got = grads(model)
    model.zero_grad(set_to_none=True)
    jsd = lambda teacher_context: sum(
        full_jsd_float64(naive_logits(model, x, y), naive_logits(model, t, y).detach(), args.topk)
        .sum() for x, t, y in teacher_context) / n  # fmt: skip
    ref = jsd(pairs)
    (args.distill_weight * ref).backward()
    assert loss == pytest.approx(ref.item(), abs=1e-6)
    for k, g in grads(model).items():
        assert torch.allclose(got[k], g, atol=1e-6), k
    first_context = [(x, pairs[0][1], y) for x, _, y in pairs[:3]] + pairs[3:]
    assert abs(jsd(first_context).item() - ref.item()) > 1e-4  # 100x the tolerance above


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


def test_lambda_zero_is_exactly_grpo(tiny_qwen_dir, tmp_path):
    """One λ = 0 step of train() equals a hand-written GRPO step: same rollouts, full-vocabulary
    log-softmax loss, clip, AdamW at 0.1 x lr (the first warm-up step)."""
    from data import chat_prompt
    from engine import eos_token_ids, generate
    from harness.loading import load_model

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
    from harness.loading import load_model

    ckpt = find_checkpoint("latest", str(tmp_path / "run"))
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
    ckpt = find_checkpoint("latest", str(tmp_path / "run"))
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


@pytest.mark.slow
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
                          amp=lambda: __import__("contextlib").nullcontext(), gen={})  # fmt: skip
    owners, out, skipped = hdpo.privileged_rollouts(run, batch, torch.tensor([True] * 4))
    assert sorted(set(owners)) == [2, 3]  # the two distillable cliffs, though 0 and 1 come first
    assert skipped == 2 and len(out) == 2 * args.privileged_generations
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


# ---------------------------------------------------------------- entropy


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
