"""Offline demo: `python demo.py` (no hub, no GPU, about 2 minutes on 2 CPU cores).

What it shows: GRPO gets no gradient from "cliff" prompts (all G rollouts wrong); HDPO distils
the same model's answer-hinted (privileged) solutions into it on exactly those prompts.

1. A character-level tokenizer and a synthetic arithmetic task with exact integer answers at four
   levels: a+b, a*b (digits) and the same sums and products in words ("six times seven", answers
   >= 10). Worked solutions end in \\boxed{N}, so verify.py is the reward.
2. A tiny Qwen2 built from a config (no download), warm-started with supervised steps: plain
   prompts only for a+b and a*b, privileged prompts (hdpo.privileged_prompt) for every level. It
   then solves most digit prompts, copies a hinted answer, and almost never solves a word prompt
   without the hint: those are cliffs that a lucky rollout rarely opens for GRPO. Saved to
   <output-dir>/warm_start.
3. Two arms from that folder, same seed and steps, through hdpo.train (the code that trains the
   real model): GRPO (λ = 0) and HDPO (λ = 1, frozen teacher). `--arms all` adds a third,
   hdpo_reinject: HDPO with re-injection of distilled cliff prompts (reinject.py, the paper's
   future work; DEMO_REINJECT).
4. The same measurements for every arm: the cliff fraction of the training prompts before and
   after (the expected fraction whose G samples at temperature 1 are all wrong, estimated from 32
   samples per prompt), and held-out greedy / pass@1,4,8 (eval.evaluate). Writes
   <output-dir>/demo_summary.json, <arm>/metrics.jsonl (hdpo.train) and demo.png.
5. `--seeds 5 6 7 8 9` runs it once per seed and reports each measure's distribution
   (demo_seeds.json): the claim is the distribution, not one run. The same seed on the same
   machine and thread count gives the same numbers; across machines, floating-point rounding
   changes each trajectory, and what holds is the distribution.

The settings were chosen on seeds 0-4 (dev/LOG.md lists what was tried): a frozen teacher (the
drifting one sometimes lost its privileged pass rate and the margin with it), 120 steps and a
300-step warm start, and the 32-sample measurement.

Demo settings (DEMO_TRAINING) replace the paper's defaults of hdpo.py's flags (`python demo.py
--help` shows them); all are printed. --model and --dataset do not apply. Nothing here is part of
the algorithm.
"""

import copy
import json
import os
import random
import shutil
import statistics
import sys
import time
from types import MappingProxyType

import torch

import hdpo
from data import chat_prompt
from engine import generate
from eval import evaluate, pass_at_k
from harness.distributed import world
from harness.loading import load_model
from harness.report import pyplot
from harness.run import run_command
from hdpo import privileged_prompt
from verify import reward

# The demo's defaults for hdpo.py's flags (build_parser); sized for 2 CPU cores.
DEMO_TRAINING = (
    ("max_steps", 120),
    ("prompts_per_step", 16),
    ("num_generations", 8),
    ("max_new_tokens", 32),
    ("lr", 2e-4),
    ("warmup_steps", 5),
    ("distill_weight", 1.0),
    ("teacher", "frozen"),
    ("micro_batch_tokens", 8192),
    ("generation_batch_size", 256),
    ("eval_every", 0),
    ("output_dir", "runs/demo"),
)
# The third arm, hdpo_reinject: HDPO with re-injection (reinject.py), its defaults for the
# re-injection flags; the grpo and hdpo arms always run with it off. Chosen once, by reasoning,
# before any result was seen: the demo's stream shows each of its 96 prompts once every 6 steps
# (16 per step), so a re-injection only adds a visit if it comes well before that: D = 2, the
# step after the next, when the distilled update has been followed by one more; M = 4, a quarter
# of the 16-prompt batch, so at least 12 prompts a step stay fresh.
DEMO_REINJECT = (("reinject_delay", 2), ("reinject_max", 4))
ARM_SETS = {"both": ("grpo", "hdpo"), "all": ("grpo", "hdpo", "hdpo_reinject")}
ALL_ARMS = ARM_SETS["all"]
# Task and warm start (demo only, not flags).
LEVELS = (
    "a+b",
    "a*b",
    "a plus b",
    "a times b",
)  # the last two in words, never shown without a hint
PLAIN_LEVELS = ("a+b", "a*b")
N_TRAIN, N_HELDOUT, N_WARM = 96, 64, 2000  # training prompts, held-out problems, warm-start pool
MODEL = MappingProxyType(
    dict(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
)
WARM = MappingProxyType(dict(steps=300, batch=32, lr=2e-3, plain_fraction=0.3))
CLIFF_SAMPLES = 32  # samples per prompt behind each measured cliff fraction (cliff_fraction)
HELDOUT_N, HELDOUT_KS = 8, (1, 4, 8)
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}Q: {{ m['content'] }}\nA: {% endif %}"
    "{% endfor %}"
)
EOS = "<|endoftext|>"
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


# ---------------------------------------------------------------------------------------- task


def make_row(rng, level):
    """One problem of `level`: {"problem", "answer", "solution", "level"}; the solution ends in
    \\boxed{answer}. The word forms ("six times seven") ask for the same arithmetic as a+b and a*b,
    with answers >= 10."""
    lo = 2 if level in ("a*b", "a times b") else 0
    while True:
        a, b = rng.randint(lo, 9), rng.randint(lo, 9)
        op, ans = ("*", a * b) if level in ("a*b", "a times b") else ("+", a + b)
        if " " not in level or ans >= 10:
            break
    text = f"{WORDS[a]} {level.split()[1]} {WORDS[b]}" if " " in level else f"{a}{op}{b}"
    return {
        "problem": f"What is {text}?",
        "answer": str(ans),
        "solution": f"{a}{op}{b}={ans}. \\boxed{{{ans}}}",
        "level": level,
    }


def make_task(seed, n_train=N_TRAIN, n_heldout=N_HELDOUT, n_warm=N_WARM):
    """(train, heldout, warm), each spread evenly over LEVELS. Training and held-out problems are
    all distinct; the warm-start pool is drawn freely from the same distribution (the single-digit
    levels have only 100 and 64 distinct problems, so it repeats those)."""
    rng, seen, train_heldout = random.Random(seed), set(), []
    for i in range(n_train + n_heldout):
        for _ in range(10_000):
            r = make_row(rng, LEVELS[i % len(LEVELS)])
            if r["problem"] not in seen:
                break
        else:
            raise ValueError(
                f"make_task: level {LEVELS[i % len(LEVELS)]} has too few distinct problems"
            )
        seen.add(r["problem"])
        train_heldout.append(r)
    warm = [make_row(rng, LEVELS[i % len(LEVELS)]) for i in range(n_warm)]
    return train_heldout[:n_train], train_heldout[n_train:], warm


# ---------------------------------------------------------------------------- tokenizer, model


def build_tokenizer(out_dir=None):
    """A character-level tokenizer: Qwen2's byte-level BPE with all 256 byte symbols and no merges,
    so every ASCII character is one token and any text encodes. EOS = pad = <|endoftext|>, as in
    Qwen2.5-Math. It is a Qwen2Tokenizer because that is what AutoTokenizer rebuilds for a folder
    whose config.json says qwen2 (transformers 5), whatever tokenizer.json holds (the fast class,
    with the same vocabulary, under transformers 4). The chat template
    keeps only the user message (data.chat_prompt also sends a system prompt)."""
    import transformers
    from tokenizers import pre_tokenizers

    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())  # the 256 byte-level symbols
    vocab = {EOS: 0, **{c: i + 1 for i, c in enumerate(symbols)}}
    special = dict(eos_token=EOS, pad_token=EOS, unk_token=EOS, clean_up_tokenization_spaces=False)
    if int(transformers.__version__.split(".")[0]) >= 5:
        tok = transformers.Qwen2Tokenizer(vocab=vocab, merges=[], **special)
    else:  # transformers 4: the same tokenizer as a fast one over a `tokenizers` BPE
        from tokenizers import Tokenizer, decoders, models

        bpe = Tokenizer(models.BPE(vocab=vocab, merges=[]))
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        bpe.decoder = decoders.ByteLevel()
        tok = transformers.Qwen2TokenizerFast(tokenizer_object=bpe, **special)
    tok.chat_template = CHAT_TEMPLATE
    if out_dir:
        tok.save_pretrained(out_dir)
    return tok


def build_model(tokenizer, seed):
    """A tiny random Qwen2ForCausalLM (MODEL) sized to the tokenizer, built from a config."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=len(tokenizer),
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        max_window_layers=MODEL["num_hidden_layers"],
        **MODEL,
    )
    return Qwen2ForCausalLM(cfg)


# ------------------------------------------------------------------------------------ warm start


def sft_batch(tokenizer, pairs):
    """(prompt, completion) text pairs -> right-padded input_ids, attention_mask, labels (completion
    + EOS)."""
    ids, labels = [], []
    for prompt, completion in pairs:
        p = tokenizer(prompt, add_special_tokens=False).input_ids
        c = tokenizer(completion, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        ids.append(p + c)
        labels.append([-100] * len(p) + c)
    width = max(map(len, ids))
    pad = lambda xs, v: [x + [v] * (width - len(x)) for x in xs]
    mask = [[1] * len(x) + [0] * (width - len(x)) for x in ids]
    return (
        torch.tensor(pad(ids, tokenizer.pad_token_id)),
        torch.tensor(mask),
        torch.tensor(pad(labels, -100)),
    )


def warm_start(model, tokenizer, rows, seed, steps, batch, lr, plain_fraction):
    """Supervised steps on worked solutions, prompts formatted by data.chat_prompt as hdpo.train
    does: plain prompts only for PLAIN_LEVELS, privileged prompts (answer in the prompt) for every
    level."""
    rng, plain = random.Random(seed), [r for r in rows if r["level"] in PLAIN_LEVELS]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * max(0.1, 1 - s / steps)
    )
    model.train()
    for _ in range(steps):
        plain_pairs, priv_pairs = [], []  # forwarded separately: privileged prompts are ~5x longer
        for _ in range(batch):
            if rng.random() < plain_fraction:
                r = rng.choice(plain)
                plain_pairs.append((chat_prompt(tokenizer, r["problem"]), r["solution"]))
            else:
                r = rng.choice(rows)
                priv_pairs.append(
                    (
                        chat_prompt(tokenizer, privileged_prompt(r["problem"], r["answer"])),
                        r["solution"],
                    )
                )
        total, count = 0.0, 0
        for pairs in (plain_pairs, priv_pairs):
            if pairs:
                ids, mask, labels = sft_batch(tokenizer, pairs)
                n = int((labels[:, 1:] != -100).sum())
                total = total + model(input_ids=ids, attention_mask=mask, labels=labels).loss * n
                count += n
        loss = total / count  # mean over every completion token of the batch
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(), sched.step(), opt.zero_grad(set_to_none=True)
    model.eval()
    return loss.item()


# ---------------------------------------------------------------------------------- measurements


def cliff_fraction(model, tokenizer, rows, G, max_new_tokens, seed, privileged=False):
    """The expected fraction of `rows` that are cliffs: whose G samples (temperature 1.0) are all
    wrong under verify.reward, overall and per level. Each prompt's probability of being a cliff is
    estimated without bias from CLIFF_SAMPLES samples as 1 − pass@G (eval.pass_at_k), which has a
    smaller variance than drawing G samples once. With privileged=True the prompts carry the
    answer (a check of the warm start)."""
    texts = [
        privileged_prompt(r["problem"], r["answer"]) if privileged else r["problem"] for r in rows
    ]
    n = max(CLIFF_SAMPLES, G)
    torch.manual_seed(seed)
    outs = generate(
        model,
        tokenizer,
        [chat_prompt(tokenizer, t) for t in texts],
        num_samples=n,
        temperature=1.0,
        max_new_tokens=max_new_tokens,
        batch_size=256,
    )
    correct = [sum(reward(o["text"], r["answer"]) > 0 for o in outs[i * n : (i + 1) * n])
               for i, r in enumerate(rows)]  # fmt: skip
    cliff = [1.0 - pass_at_k(n, c, G) for c in correct]
    by_level = {lv: [c for c, r in zip(cliff, rows) if r["level"] == lv] for lv in LEVELS}
    return sum(cliff) / len(cliff), {
        lv: round(sum(c) / len(c), 3) for lv, c in by_level.items() if c
    }


def heldout_metrics(model, tokenizer, rows, max_new_tokens, seed):
    """eval.evaluate on the held-out problems: greedy and pass@1,4,8 from HELDOUT_N samples."""
    torch.manual_seed(seed)
    res = evaluate(
        model,
        tokenizer,
        [r["problem"] for r in rows],
        [r["answer"] for r in rows],
        n=HELDOUT_N,
        ks=HELDOUT_KS,
        max_new_tokens=max_new_tokens,
        batch_size=256,
        progress=False,
    )
    return {k: res[k] for k in ("greedy",) + tuple(f"pass@{k}" for k in HELDOUT_KS)}


# -------------------------------------------------------------------------------------- the demo


def build_warm_start(out_dir, train, warm, seed):
    """Tokenizer + tiny Qwen2 + supervised warm start, saved to out_dir; returns (model,
    tokenizer)."""
    t0 = time.time()
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, seed)
    loss = warm_start(model, tokenizer, warm, seed, **WARM)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    n = sum(p.numel() for p in model.parameters())
    print(
        f"warm start: {n / 1e3:.0f}k-parameter Qwen2, {WARM['steps']} supervised steps, final "
        f"loss {loss:.3f}, "
        f"{time.time() - t0:.0f}s -> {out_dir}",
        flush=True,
    )
    return model, tokenizer


def measure(model, tokenizer, train, heldout, a):
    """The measurements shared by both arms: training-prompt cliff fraction and held-out metrics."""
    cf, by_level = cliff_fraction(
        model, tokenizer, train, a.num_generations, a.max_new_tokens, a.seed + 1
    )
    return {
        "cliff_fraction": cf,
        "cliff_fraction_by_level": by_level,
        "heldout": heldout_metrics(model, tokenizer, heldout, a.max_new_tokens, a.seed + 2),
    }


def run_arm(arm, a, warm_dir, train, start, heldout):
    """hdpo.train from the warm start (λ = 0 for grpo; re-injection only for hdpo_reinject), then
    the same measurements as at the start."""
    arm_args = copy.copy(a)
    arm_args.output_dir, arm_args.model = os.path.join(a.output_dir, arm), warm_dir
    arm_args.distill_weight = 0.0 if arm == "grpo" else a.distill_weight
    if arm != "hdpo_reinject":
        arm_args.reinject_delay = 0  # off: the grpo and hdpo arms are the paper's methods
    if arm_args.resume == "latest" and not os.path.isdir(
        os.path.join(arm_args.output_dir, "checkpoints")
    ):
        arm_args.resume = None  # nothing to resume for this arm: start it
    rank, ws = world()
    if not arm_args.resume and rank == 0:  # a fresh run (hdpo.train appends to metrics.jsonl)
        shutil.rmtree(arm_args.output_dir, ignore_errors=True)
    if ws > 1:  # torchrun: no rank starts the arm before rank 0 has cleared its folder
        torch.distributed.barrier()
    again = (
        f", re-injection D={a.reinject_delay} M={a.reinject_max}" if arm_args.reinject_delay else ""
    )
    print(f"\n=== {arm.upper()} (λ = {arm_args.distill_weight}{again}) ===", flush=True)
    t0 = time.time()
    res = hdpo.train(arm_args, train, heldout)  # validation on held-out only with --eval-every
    time_s = time.time() - t0
    if res.get("interrupted"):
        raise KeyboardInterrupt
    model, tokenizer = load_model(
        os.path.join(arm_args.output_dir, "final"), device="cpu", dtype=torch.float32
    )
    end = measure(model, tokenizer, train, heldout, a)
    return {
        **reinject_totals(arm_args),
        "distill_weight": arm_args.distill_weight,
        "steps": res["steps"],
        "time_s": round(time_s, 1),
        "cliff_fraction_start": start["cliff_fraction"],
        "cliff_fraction_end": end["cliff_fraction"],
        "cliff_fraction_by_level_start": start["cliff_fraction_by_level"],
        "cliff_fraction_by_level_end": end["cliff_fraction_by_level"],
        "heldout": end["heldout"],
        "heldout_start": start["heldout"],
    }


def reinject_totals(arm_args):
    """An arm with re-injection: its delay and cap, and its metrics.jsonl summed over the steps
    (re-injected prompts, solved, cliffs again, queued) with the queue's length at the end."""
    path = os.path.join(arm_args.output_dir, "metrics.jsonl")
    if not arm_args.reinject_delay or not os.path.exists(path):  # (rank 0 writes metrics.jsonl)
        return {}
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    keys = ("reinjected", "reinjected_solved", "reinjected_cliffs", "reinject_queued")
    totals = {k: sum(r[k] for r in rows) for k in keys}
    return {
        "reinject": {
            "delay": arm_args.reinject_delay,
            "max": arm_args.reinject_max,
            **totals,
            "queue_end": rows[-1]["reinject_queue"] if rows else 0,
        }
    }


def print_table(summary):
    """The side-by-side table on the console."""
    arms = list(summary)
    lines = [
        ("cliff fraction, start", "{:.3f}", lambda s: s["cliff_fraction_start"]),
        ("cliff fraction, end", "{:.3f}", lambda s: s["cliff_fraction_end"]),
    ]
    lines += [
        (f"held-out {k}", "{:.3f}", lambda s, k=k: s["heldout"][k])
        for k in ("greedy",) + tuple(f"pass@{k}" for k in HELDOUT_KS)
    ]
    lines += [
        ("training time (s)", "{:.1f}", lambda s: s["time_s"]),
        ("steps", "{}", lambda s: s["steps"]),
    ]
    heads = [f"{arm.upper()} (λ={summary[arm]['distill_weight']:g})" for arm in arms]
    w = max(16, *(len(h) + 2 for h in heads))
    print("\n" + " " * 24 + "".join(f"{h:>{w}}" for h in heads))
    for label, fmt, get in lines:
        print(f"{label:24}" + "".join(f"{fmt.format(get(summary[arm])):>{w}}" for arm in arms))
    end = {arm: s["cliff_fraction_end"] for arm, s in summary.items()}
    fewer = lambda d: f"{abs(d):.3f} {'fewer' if d >= 0 else 'more'}"
    if "grpo" in end and "hdpo" in end:
        d = end["grpo"] - end["hdpo"]
        print(
            f"\nHDPO ends with {fewer(d)} of the training prompts as cliffs than GRPO (absolute): "
            f"the margin is {d:+.3f}."
        )
    if "hdpo" in end and "hdpo_reinject" in end:
        r = summary["hdpo_reinject"].get("reinject", {})
        print(
            f"HDPO with re-injection (D={r.get('delay')}, M={r.get('max')}: "
            f"{r.get('reinjected')} prompts re-injected, {r.get('reinjected_solved')} of them "
            f"solved at least once, {r.get('reinjected_cliffs')} cliffs again) ends with "
            f"{fewer(end['hdpo'] - end['hdpo_reinject'])} cliffs than HDPO (absolute)."
        )


def plot(out_dir, summary):
    """demo.png: cliff fraction and mean reward of each step's batch (thin) with a 5-step running
    mean (thick), and the measured cliff fraction of all training prompts at the start and end
    (dots)."""
    plt = pyplot("demo.png")
    if plt is None:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for i, (arm, s) in enumerate(summary.items()):
        with open(os.path.join(out_dir, arm, "metrics.jsonl")) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        steps, color = [r["step"] for r in rows], f"C{i}"
        for ax, key in zip(axes, ("cliff_fraction", "reward_mean")):
            ys = [r[key] for r in rows]
            ax.plot(steps, ys, color=color, alpha=0.3, lw=1)
            ax.plot(
                steps,
                [
                    sum(ys[max(0, j - 4) : j + 1]) / len(ys[max(0, j - 4) : j + 1])
                    for j in range(len(ys))
                ],
                color=color,
                lw=2,
                label=f"{arm.upper()} (λ={s['distill_weight']:g})",
            )
        axes[0].plot(
            [0, s["steps"]],
            [s["cliff_fraction_start"], s["cliff_fraction_end"]],
            "o",
            color=color,
            ms=7,
            label=f"{arm.upper()}: all training prompts (start, end)",
        )
    titles = ("cliff fraction (all G rollouts wrong)", "mean reward of the step's rollouts")
    for ax, title in zip(axes, titles):
        ax.set_title(title), ax.set_xlabel("step"), ax.legend(fontsize=8), ax.grid(alpha=0.3)
    fig.tight_layout()
    path = os.path.join(out_dir, "demo.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run_demo(a):
    """Warm start, then GRPO and/or HDPO, measured the same way (module docstring). a: the
    flags (parse_args)."""
    t0 = time.time()
    defaults = dict(DEMO_TRAINING + DEMO_REINJECT)
    arms = ARM_SETS.get(a.arms, (a.arms,))
    random.seed(a.seed), torch.manual_seed(a.seed)
    train, heldout, warm = make_task(a.seed)
    warm_dir = os.path.join(a.output_dir, "warm_start")
    print(
        f"HDPO demo | {len(train)} training prompts, {len(heldout)} held-out problems, levels "
        f"{', '.join(LEVELS)} "
        f"(plain warm start only on {', '.join(PLAIN_LEVELS)}) | arms: {', '.join(arms)}"
    )
    print(
        "settings: "
        + ", ".join(
            f"{k}={getattr(a, k)}{'' if getattr(a, k) == v else ' (yours)'}"
            for k, v in defaults.items()
        )
        + " (re-injection: hdpo_reinject arm only)"
    )
    print(f"model: {dict(MODEL)}; warm start: {dict(WARM)}")
    rank, ws = world()
    if rank == 0 and not (a.resume and os.path.exists(os.path.join(warm_dir, "config.json"))):
        build_warm_start(
            warm_dir, train, warm, a.seed
        )  # torchrun: rank 0 writes, the others wait and load
    if ws > 1:
        torch.distributed.barrier()
    model, tokenizer = load_model(
        warm_dir, device="cpu", dtype=torch.float32
    )  # as the arms will load it
    start = measure(model, tokenizer, train, heldout, a)
    _, priv = cliff_fraction(
        model, tokenizer, train, a.num_generations, a.max_new_tokens, a.seed + 3, privileged=True
    )
    print(
        f"warm start: cliff fraction {start['cliff_fraction']:.3f}, by level "
        f"{start['cliff_fraction_by_level']}; "
        f"with the answer in the prompt (privileged): {priv}",
        flush=True,
    )
    path = os.path.join(a.output_dir, "demo_summary.json")
    summary = {}
    if len(arms) == 1 and os.path.exists(path):  # one arm: keep the other arms' last results
        with open(path) as f:
            summary = {k: v for k, v in json.load(f).items() if k in ALL_ARMS}
    for arm in arms:
        summary[arm] = run_arm(arm, a, warm_dir, train, start, heldout)
        summary[arm]["settings"] = {
            k: getattr(a, k) for k, _ in DEMO_TRAINING if k not in ("distill_weight", "output_dir")
        }  # (the hdpo_reinject arm's delay and cap are in its "reinject" field)
    summary = {arm: summary[arm] for arm in ALL_ARMS if arm in summary}
    if rank != 0:  # torchrun: rank 0 writes the summary and the plot
        return summary
    with open(path, "w") as f:
        json.dump(summary, f, indent=2)
    print_table(summary)
    png = plot(a.output_dir, summary)
    print(
        f"\nwrote {path}" + (f", {png}" if png else "") + f" | demo total {time.time() - t0:.0f}s"
    )
    if a.seeds is None:
        print_context()
    return summary


# ---------------------------------------------------------------------------------- over seeds

# the committed multi-seed result (python demo.py --seeds 5 6 7 8 9, see the README)
SEEDS_RESULT = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "benchmarks", "results", "demo_seeds.json"
)


def seed_measures(summary):
    """One seed's measures, flat: each arm's cliff fractions, held-out scores and training time,
    and the differences the demo is about: the cliff margin (GRPO's end minus HDPO's), HDPO's
    held-out scores minus GRPO's, and HDPO's end cliffs minus re-injection's."""
    row = {}
    for arm, s in summary.items():
        row[f"{arm}/cliffs_start"] = s["cliff_fraction_start"]
        row[f"{arm}/cliffs_end"] = s["cliff_fraction_end"]
        row.update({f"{arm}/{k}": v for k, v in s["heldout"].items()})
        row[f"{arm}/time_s"] = s["time_s"]
    if "grpo" in summary and "hdpo" in summary:
        row["margin"] = row["grpo/cliffs_end"] - row["hdpo/cliffs_end"]
        for k in summary["hdpo"]["heldout"]:
            row[f"hdpo-grpo/{k}"] = row[f"hdpo/{k}"] - row[f"grpo/{k}"]
    if "hdpo" in summary and "hdpo_reinject" in summary:
        row["reinject_margin"] = row["hdpo/cliffs_end"] - row["hdpo_reinject/cliffs_end"]
    return row


def distribution(rows):
    """{measure: {values, mean, std, min, max}} over the seeds' rows (std: sample, 0 for one)."""
    out = {}
    for k in rows[0]:
        v = [r[k] for r in rows]
        std = statistics.stdev(v) if len(v) > 1 else 0.0
        out[k] = dict(values=v, mean=statistics.mean(v), std=std, min=min(v), max=max(v))
    return out


def machine():
    """The CPU, its core count and the library versions: what a seed's numbers depend on."""
    import platform

    import transformers

    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "transformers": transformers.__version__}  # fmt: skip


def run_seeds(a, command=""):
    """--seeds: the demo once per seed (each in <output-dir>/seed-<s>, its own task and warm
    start), in one process; then every measure's per-seed values, mean, standard deviation, min
    and max, printed and written to <output-dir>/demo_seeds.json with the command and machine."""
    seeds = list(range(a.seeds[0])) if len(a.seeds) == 1 else a.seeds
    t0, rows = time.time(), {}
    for s in seeds:
        b = copy.copy(a)
        b.seed, b.output_dir = s, os.path.join(a.output_dir, f"seed-{s}")
        rows[s] = seed_measures(run_demo(b))
    dist = distribution(list(rows.values()))
    result = {
        "command": command, "machine": machine(),
        "seeds": seeds, "threads": torch.get_num_threads(), "wall_s": round(time.time() - t0),
        "settings": {k: getattr(a, k) for k, _ in DEMO_TRAINING if k != "output_dir"},
        "per_seed": rows, "distribution": dist,
    }  # fmt: skip
    path = os.path.join(a.output_dir, "demo_seeds.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    cols = [k for k in ("grpo/cliffs_start", "grpo/cliffs_end", "hdpo/cliffs_end", "margin",
                        "hdpo_reinject/cliffs_end", "reinject_margin") if k in dist]  # fmt: skip
    print("\nseed " + "".join(f"{c:>26}" for c in cols))
    for s, r in rows.items():
        print(f"{s:<5}" + "".join(f"{r[c]:>26.3f}" for c in cols))
    print(f"\n{'measure':<28}{'mean':>8}{'std':>8}{'min':>8}{'max':>8}")
    for k, d in dist.items():
        print(f"{k:<28}" + "".join(f"{d[x]:>8.3f}" for x in ("mean", "std", "min", "max")))
    print(f"\nwrote {path} | {len(seeds)} seeds in {result['wall_s']} s")
    return result


def print_context(path=SEEDS_RESULT):
    """After a single run: the committed multi-seed result this run is one draw from."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        res = json.load(f)
    m = res["distribution"].get("margin")
    if m:
        print(
            f"Over seeds {', '.join(map(str, res['seeds']))} ({os.path.relpath(path)}): the margin "
            f"was {m['mean']:+.3f} on average (std {m['std']:.3f}, min {m['min']:+.3f}, max "
            f"{m['max']:+.3f}); one run is one draw from that distribution."
        )


def build_parser():
    """hdpo.py's flags with the demo's defaults (DEMO_TRAINING, DEMO_REINJECT), plus --arms and
    --seeds."""
    p = hdpo.build_parser()
    p.description = "Offline demo: GRPO vs HDPO on a synthetic task with a tiny model (demo.py)."
    p.set_defaults(**dict(DEMO_TRAINING + DEMO_REINJECT))
    g = p.add_argument_group("demo")
    g.add_argument(
        "--arms",
        choices=["grpo", "hdpo", "hdpo_reinject", "both", "all"],
        default="both",
        help="both: grpo and hdpo; all: also hdpo_reinject (HDPO with re-injection)",
    )
    g.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="N: seeds 0..N-1; or a list of seeds: the demo once per seed, then the distribution "
        "of each measure (demo_seeds.json)",
    )
    return p


def parse_args(argv=None):
    return hdpo.parse_args(argv, build_parser())


def main(argv=None):
    args = parse_args(argv)
    command = "python demo.py " + " ".join(sys.argv[1:] if argv is None else argv)
    run = lambda: run_seeds(args, command) if args.seeds else run_demo(args)
    run_command("demo.py", run, args.debug)


if __name__ == "__main__":
    main()
