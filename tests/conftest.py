"""Shared fixtures and helpers: the tiny random Qwen2 on disk, a small in-memory model with the
losses' fixed batch, training flags and rows for short offline runs, a deterministic reward, and
the shortened demo."""

import hashlib
import json
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
DATA = os.path.join(ROOT, "tests", "data")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import hdpo  # noqa: E402  (after sys.path has the repository)


@pytest.fixture(scope="session")
def tiny_qwen_dir(tmp_path_factory):
    """A random-weight Qwen2 (hidden 64, 2 layers) with the real Qwen2.5 tokenizer, on disk."""
    from harness.offline import build_random_qwen

    return build_random_qwen(str(tmp_path_factory.mktemp("tiny_qwen")))


# ---------------------------------------------------------------- a small model and a fixed batch


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


# Small random models of the architectures users copy the project onto, each with the feature
# that makes it differ from Qwen2/Llama: a sliding attention window shorter than the test's
# prompts, a logit transform, or dynamic-NTK RoPE beyond a short original context.
ARCHS = {
    "qwen2": ("Qwen2", {}),
    "llama": ("Llama", {}),
    "mistral-window": ("Mistral", {"sliding_window": 6}),
    "qwen2-window": (
        "Qwen2",
        {"use_sliding_window": True, "sliding_window": 6, "max_window_layers": 1},
    ),
    "gemma2": ("Gemma2", {"sliding_window": 6, "head_dim": 8, "final_logit_softcapping": 3.0}),
    "granite": ("Granite", {"logits_scaling": 4.0}),
    "llama-dynamic-ntk": (
        "Llama",
        {"max_position_embeddings": 12, "rope_scaling": {"rope_type": "dynamic", "factor": 2.0}},
    ),
}


def arch_model(name, seed=0, vocab=300, **overrides):
    """A random <name> model (ARCHS) of hidden size 32, 2 layers, 4 heads, 2 KV heads, fp32,
    eval mode; overrides replace config fields."""
    import transformers

    family, extra = ARCHS[name]
    torch.manual_seed(seed)
    kw = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, bos_token_id=1, eos_token_id=2,
              pad_token_id=0)  # fmt: skip
    cfg = getattr(transformers, family + "Config")(**{**kw, **extra, **overrides})
    return getattr(transformers, family + "ForCausalLM")(cfg).float().eval()


# ---------------------------------------------------------------- short offline training runs


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


def long_row(words=3000):
    return {"problem": "Compute " + "x + " * words + "1.", "answer": "1", "solution": None}


# ---------------------------------------------------------------- the demo, shortened

# demo.py's flags for a run of seconds: 4 prompts x 4 rollouts x 12 tokens, 2 privileged rollouts
DEMO_ARGS = ["--prompts-per-step", "4", "--num-generations", "4", "--privileged-generations", "2",
             "--max-new-tokens", "12"]  # fmt: skip


def shorten_demo(setattr):
    """The demo with a 6-step warm start on 32 problems, 8 training and 4 held-out problems.
    setattr: monkeypatch.setattr in a test, the builtin in a torchrun worker."""
    import functools

    import demo

    make_task = getattr(demo.make_task, "func", demo.make_task)  # idempotent: the original
    setattr(demo, "WARM", dict(demo.WARM, steps=6, batch=8))
    setattr(demo, "make_task", functools.partial(make_task, n_train=8, n_heldout=4, n_warm=32))


# ---------------------------------------------------------------- naive references for the losses


def naive_logits(model, prompt, completion, temperature=1.0):
    """The model's own full-vocabulary logits (model(...).logits: its scale or soft-cap included)
    at the positions predicting each completion token, the sequence forwarded alone, divided by
    the sampling temperature. -> [|c|, V]"""
    ids = torch.tensor([list(prompt) + list(completion)])
    logits = model(input_ids=ids).logits[0]  # [L, V]
    return logits[len(prompt) - 1 : len(prompt) + len(completion) - 1] / temperature  # [|c|, V]


def full_jsd_float64(student_logits, teacher_logits, k):
    """Reference: the truncated teacher as a full-vocabulary distribution, float64, 0·log 0 = 0."""
    s, t = student_logits.double(), teacher_logits.double()
    vals, idx = t.topk(k, -1)
    p = torch.zeros_like(t).scatter(-1, idx, vals.softmax(-1))
    q = s.softmax(-1)
    m = 0.5 * (p + q)
    kl = lambda a, b: torch.where(a > 0, a * (a.log() - b.log()), torch.zeros_like(a)).sum(-1)
    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def naive_hdpo_gradients(model, teacher, seqs, advantages, pairs, args):
    """∇(L_GRPO + λ L_JSD) the straightforward way: every sequence forwarded alone through
    model(...).logits, full-vocabulary log-softmax at --temperature, the JSD_k against the
    teacher's full logits. -> (grads by parameter name, L_GRPO, L_JSD); model.grad is left
    zeroed."""
    T = args.temperature
    n_grpo, n_jsd = sum(len(c) for _, c in seqs), sum(len(y) for *_, y in pairs)
    model.zero_grad(set_to_none=True)
    grpo = sum(-a * naive_logits(model, p, c, T).log_softmax(-1)
               .gather(-1, torch.tensor(c)[:, None]).sum()
               for (p, c), a in zip(seqs, advantages)) / max(n_grpo, 1)  # fmt: skip
    jsd = 0.0
    for x, xy, y in pairs:
        with torch.no_grad():
            t = naive_logits(teacher, xy, y, T)
        jsd = jsd + full_jsd_float64(naive_logits(model, x, y, T), t, args.topk).sum() / n_jsd
    (grpo + args.distill_weight * jsd).backward()
    out = grads(model)
    model.zero_grad(set_to_none=True)
    return out, float(grpo.detach()), float(jsd.detach())
