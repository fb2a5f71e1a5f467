"""HDPO: Hybrid Distillation Policy Optimization (Ding, arXiv 2603.23871), in one file.

GRPO for math reasoning, plus privileged self-distillation on "cliff" prompts: prompts whose G
rollouts all fail, where GRPO's advantages (and so its gradient) are exactly zero. For a cliff
prompt x with ground truth y*, the same model sees x ⊕ y* (the problem with the answer written
into it), its correct solutions ȳ are kept (R = 1 filter), and the privileged model's top-k
token distribution is distilled into the plain model on ȳ with a Jensen-Shannon loss:

    L_HDPO = L_GRPO + λ · L_JSD                                   (PAPER.md, "The loss")

    python hdpo.py --model Qwen/Qwen2.5-Math-1.5B-Instruct          # the paper's setting (1 GPU)
    torchrun --nproc_per_node 8 hdpo.py --model ...                 # the paper's 8 GPUs
    python hdpo.py --demo                                           # offline CPU demo (demo.py)

The file reads top to bottom like Algorithm 1: prompts → rollouts → rewards → advantages →
cliffs → privileged rollouts → R = 1 filter → losses → update. Where it departs from the paper:
- Generation uses transformers' `generate` (the paper uses vLLM).
- One optimiser update per step, on-policy, so the PPO ratio is exp(logp − logp.detach()) = 1
  and the ε-clip (kept, as in the paper) never binds; the gradient is −A·∇logp per token.
- The paper does not print its privileged-prompt wording; ours is PRIVILEGED_TEMPLATE below.
- Privileged rollouts per cliff prompt (`--privileged-generations`, default 4) is not stated.
- Privileged rollouts are sampled from the current policy π_θ (Algorithm 1, line 4) for both
  teachers; the frozen teacher only supplies the target distribution.
- Sequences whose advantage is exactly 0 (all G rewards equal) are not forwarded for L_GRPO:
  their gradient is exactly zero; their tokens still count in the token normaliser.
- fp32 master weights with bf16 autocast on GPU (the paper says bfloat16, not how).
- `--max-cliffs` caps cliffs per rank at ceil(max_cliffs / world_size) under torchrun.
The memory-bounded lm_head (logits for a chunk of positions at a time) is in lm_head.py.
"""
import argparse
import contextlib
import copy
import json
import math
import os
import random
import shutil
import signal
import sys
import threading
import time

import numpy as np
import torch
import torch.distributed as dist

from lm_head import head_gather_lse, head_topk
from eval import DataError, ModelLoadError, quiet_libraries, chat_prompt, eos_token_ids, evaluate, generate, load_model, load_problems, summarize

LN2 = math.log(2.0)

# ----------------------------------------------------------------------------------------------
# Flags: the defaults are the paper's hyper-parameters (PAPER.md, "GRPO as the paper runs it").


def build_parser():
    p = argparse.ArgumentParser(description="HDPO: GRPO + privileged self-distillation on cliff prompts.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("model")
    g.add_argument("--model", default="Qwen/Qwen2.5-Math-1.5B-Instruct", help="hub id or local folder")
    g.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations (long sequences)")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="nvidia/OpenMathInstruct-2", help="hub id or local .jsonl/.json/.parquet")
    g.add_argument("--split", default="train_1M")
    g.add_argument("--dataset-config", default=None)
    g.add_argument("--problem-key", default=None)
    g.add_argument("--answer-key", default=None)
    g.add_argument("--solution-key", default=None)
    g.add_argument("--val-fraction", type=float, default=0.05, help="held out for validation (95/5 split)")
    g = p.add_argument_group("GRPO (Algorithm 1, lines 1-2)")
    g.add_argument("--prompts-per-step", type=int, default=32)
    g.add_argument("--num-generations", type=int, default=16, help="G rollouts per prompt")
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--max-seq-len", type=int, default=4096, help="prompt + completion (Qwen2.5-Math context)")
    g.add_argument("--max-new-tokens", type=int, default=4096, help="completion cap (also capped by --max-seq-len)")
    g.add_argument("--advantage", choices=["loo", "grpo"], default="loo", help="leave-one-out or (r-mean)/std")
    g.add_argument("--clip-eps", type=float, default=0.2)
    g = p.add_argument_group("HDPO (Algorithm 1, lines 3-6)")
    g.add_argument("--distill-weight", type=float, default=0.01, help="λ; 0 is plain GRPO")
    g.add_argument("--teacher", choices=["drifting", "frozen"], default="drifting")
    g.add_argument("--topk", type=int, default=64, help="teacher top-k of JSD_k")
    g.add_argument("--max-cliffs", type=int, default=32, help="cliff prompts distilled per step")
    g.add_argument("--privileged-generations", type=int, default=4, help="privileged rollouts per cliff prompt")
    g.add_argument("--privileged", choices=["answer", "solution"], default="answer", help="what x ⊕ y* injects")
    g = p.add_argument_group("optimisation (Algorithm 1, line 7)")
    g.add_argument("--max-steps", type=int, default=2000)
    g.add_argument("--lr", type=float, default=1e-6)
    g.add_argument("--weight-decay", type=float, default=0.01)
    g.add_argument("--adam-betas", type=float, nargs=2, default=[0.9, 0.999])
    g.add_argument("--adam-eps", type=float, default=1e-8)
    g.add_argument("--warmup-steps", type=int, default=50, help="linear warm-up from 0.1x to 1x, then constant")
    g.add_argument("--max-grad-norm", type=float, default=1.0)
    g.add_argument("--micro-batch-size", type=int, default=4, help="sequences per forward/backward")
    g.add_argument("--generation-batch-size", type=int, default=128, help="sequences per generate call")
    g.add_argument("--logit-chunk", type=int, default=None,
                   help="positions per lm_head chunk: one [chunk, vocab] fp32 buffer (default 1024 on GPU, 128 on CPU)")
    g.add_argument("--seed", type=int, default=42)
    g = p.add_argument_group("validation")
    g.add_argument("--eval-every", type=int, default=10, help="0 turns validation off")
    g.add_argument("--eval-problems", type=int, default=2048)
    g.add_argument("--eval-n", type=int, default=8, help="samples per problem for pass@k")
    g.add_argument("--eval-k", type=int, nargs="+", default=[4, 8])
    g = p.add_argument_group("output and checkpoints")
    g.add_argument("--output-dir", default=None, help="default runs/hdpo (runs/demo with --demo)")
    g.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps (0: only at the end)")
    g.add_argument("--keep-checkpoints", type=int, default=2)
    g.add_argument("--resume", nargs="?", const="latest", default=None, help="latest checkpoint in --output-dir, or a path")
    g.add_argument("--max-bad-steps", type=int, default=5, help="stop after this many non-finite steps in a row")
    g.add_argument("--samples-per-step", type=int, default=2, help="completions written to samples.jsonl")
    g.add_argument("--debug", action="store_true", help="show tracebacks")
    g = p.add_argument_group("offline demo")
    g.add_argument("--demo", action="store_true", help="tiny model + synthetic task, GRPO vs HDPO (CPU, minutes)")
    g.add_argument("--arms", choices=["grpo", "hdpo", "both"], default="both")
    return p


def parse_args(argv=None):
    p = build_parser()
    a = p.parse_args(argv)
    checks = [(a.num_generations >= 2, "--num-generations must be >= 2 (GRPO needs a group)"),
              (a.topk >= 1, "--topk must be >= 1"), (a.distill_weight >= 0, "--distill-weight (λ) must be >= 0"),
              (a.prompts_per_step >= 1, "--prompts-per-step must be >= 1"), (a.max_steps >= 0, "--max-steps must be >= 0"),
              (a.lr > 0, "--lr must be > 0"), (a.clip_eps > 0, "--clip-eps must be > 0"),
              (a.temperature > 0, "--temperature must be > 0"), (a.max_new_tokens >= 1, "--max-new-tokens must be >= 1"),
              (a.max_seq_len >= 2, "--max-seq-len must be >= 2"), (a.max_cliffs >= 0, "--max-cliffs must be >= 0"),
              (a.privileged_generations >= 1, "--privileged-generations must be >= 1"),
              (a.micro_batch_size >= 1 and a.generation_batch_size >= 1 and (a.logit_chunk or 1) >= 1, "batch sizes must be >= 1"),
              (a.warmup_steps >= 0 and a.eval_every >= 0 and a.save_every >= 0, "step counts must be >= 0"),
              (a.keep_checkpoints >= 1 and a.max_bad_steps >= 1, "--keep-checkpoints/--max-bad-steps must be >= 1"),
              (0 < a.val_fraction < 1, "--val-fraction must be in (0, 1)"), (a.eval_n >= 0, "--eval-n must be >= 0"),
              (a.max_grad_norm > 0, "--max-grad-norm must be > 0"),
              (all(0 <= b < 1 for b in a.adam_betas), "--adam-betas must be in [0, 1)"),
              (a.adam_eps >= 0 and a.weight_decay >= 0, "--adam-eps and --weight-decay must be >= 0"),
              (all(1 <= k <= max(a.eval_n, 1) for k in a.eval_k), "each --eval-k must be in [1, --eval-n]")]
    for ok, msg in checks:
        if not ok:
            p.error(msg)
    a.output_dir = a.output_dir or ("runs/demo" if a.demo else "runs/hdpo")
    if a.logit_chunk is None:  # GPU: big chunks keep the kernels busy; CPU: a 128 x 151,936 fp32 buffer (78 MB) is fastest
        a.logit_chunk = 1024 if torch.cuda.is_available() else 128
    return a


# ----------------------------------------------------------------------------------------------
# Prompts. x is the plain problem; x ⊕ y* the privileged one. Filled with str.replace, never
# str.format: answers and templates contain literal braces (\boxed{}, \frac{1}{2}).

PRIVILEGED_TEMPLATE = (
    "{problem}\n\n"
    "(Hint: the correct final answer is {answer}. Write a complete step-by-step solution "
    "that arrives at it, and put the final answer within \\boxed{}.)"
)


def privileged_prompt(problem, answer, solution=None):
    """x ⊕ y*: the problem with the ground truth written into it (PAPER.md, 'The idea')."""
    hint = answer if solution is None else (answer + ". A reference solution:\n" + solution + "\n")
    return PRIVILEGED_TEMPLATE.replace("{answer}", hint).replace("{problem}", problem)


# ----------------------------------------------------------------------------------------------
# Rewards, advantages, cliffs (Algorithm 1, lines 2-3). Pure functions on [P, G] tensors.


def group_advantages(rewards, kind="loo"):
    """rewards [P, G] -> advantages [P, G]. 'loo': A_i = r_i - mean_{j != i} r_j (the paper's table);
    'grpo': (r - mean) / (std + 1e-4) (Algorithm 1, line 7)."""
    G = rewards.shape[1]
    if kind == "loo":
        baseline = (rewards.sum(1, keepdim=True) - rewards) / (G - 1)  # [P, G] mean of the other G-1
        return rewards - baseline
    mean, std = rewards.mean(1, keepdim=True), rewards.std(1, keepdim=True)  # [P, 1]
    return (rewards - mean) / (std + 1e-4)


def find_cliffs(rewards):
    """rewards [P, G] -> [P] bool: prompts whose rewards sum to 0 (every rollout failed)."""
    return rewards.sum(1) == 0


def r1_filter(completions, answers, reward_fn):
    """Algorithm 1, line 5: keep the privileged rollouts whose reward is 1. -> list of bool."""
    return [reward_fn(c, a) >= 1 for c, a in zip(completions, answers)]


# ----------------------------------------------------------------------------------------------
# Per-token losses. Pure functions: logits in, one value per position out.


def grpo_token_loss(logp, old_logp, advantages, clip_eps=0.2):
    """PPO-clipped policy-gradient loss per token. logp, old_logp, advantages: [N] -> [N]."""
    ratio = torch.exp(logp - old_logp)  # [N]
    return -torch.min(ratio * advantages, ratio.clamp(1 - clip_eps, 1 + clip_eps) * advantages)


def jsd_from_topk(student_logits, teacher_topk_values, teacher_topk_indices):
    """JSD_k per position between the teacher's top-k distribution P (renormalised over its k
    tokens) and the student's full softmax Q. student_logits [..., V]; teacher top-k [..., k].
    Exact for the truncated teacher: outside the top-k, P = 0 and each token adds ½·q·ln 2."""
    student_logits = student_logits.float()
    lse = torch.logsumexp(student_logits, -1, keepdim=True)  # [..., 1]
    return jsd_from_logq(student_logits.gather(-1, teacher_topk_indices) - lse, teacher_topk_values)


def jsd_from_logq(log_q, teacher_topk_values):
    """jsd_from_topk from the student's log-probabilities on the teacher's top-k tokens, log_q [..., k]:
    all the student side needs (its mass outside the top-k is 1 - Σ exp(log_q))."""
    log_p = torch.log_softmax(teacher_topk_values.float(), -1)  # [..., k] teacher, renormalised
    log_m = torch.logaddexp(log_p, log_q) - LN2  # [..., k] log of M = (P + Q) / 2
    q = log_q.exp()  # [..., k]
    kl_pm = (log_p.exp() * (log_p - log_m)).sum(-1)  # [...] KL(P || M)
    kl_qm = (q * (log_q - log_m)).sum(-1) + (1 - q.sum(-1)).clamp_min(0) * LN2  # [...] KL(Q || M), tail in closed form
    return 0.5 * kl_pm + 0.5 * kl_qm


def jsd_topk(student_logits, teacher_logits, k=64):
    """JSD_k(π_T || π_θ) per position (PAPER.md, "The loss"). [..., V] x [..., V] -> [...].
    The teacher side carries no gradient; natural log, bounded by ln 2."""
    with torch.no_grad():
        values, indices = teacher_logits.float().topk(min(k, teacher_logits.shape[-1]), -1)  # [..., k]
    return jsd_from_topk(student_logits, values, indices)


# ----------------------------------------------------------------------------------------------
# Memory-bounded forward: hidden states only at the positions that predict completion tokens,
# then the lm_head over chunks of positions into ONE reused [chunk, V] fp32 buffer (forward and
# backward), so a full-vocabulary fp32 tensor exists for one chunk at a time, never for a whole
# micro-batch, and nothing vocabulary-sized is allocated per chunk.


def completion_hidden(model, seqs, device):
    """seqs: list of (prompt_ids, completion_ids). -> hidden [N, H] at the positions predicting
    each completion token, and those tokens [N]; N = total completion tokens, sequence order."""
    B, L = len(seqs), max(len(p) + len(c) for p, c in seqs)
    ids = torch.zeros(B, L, dtype=torch.long)  # [B, L] right-padded
    attn = torch.zeros(B, L, dtype=torch.long)  # [B, L]
    rows, cols, targets = [], [], []
    for b, (p, c) in enumerate(seqs):
        ids[b, :len(p) + len(c)] = torch.tensor(list(p) + list(c))
        attn[b, :len(p) + len(c)] = 1
        rows += [b] * len(c)
        cols += range(len(p) - 1, len(p) + len(c) - 1)
        targets += list(c)
    hidden = model.base_model(input_ids=ids.to(device), attention_mask=attn.to(device), use_cache=False).last_hidden_state  # [B, L, H]
    return hidden[torch.tensor(rows, device=device), torch.tensor(cols, device=device)], torch.tensor(targets, device=device)


def grpo_backward(model, seqs, advantages, n_tokens, args, device, amp=contextlib.nullcontext):
    """Accumulate ∇ L_GRPO into .grad. seqs: (prompt_ids, completion_ids); advantages: one float
    per sequence; n_tokens: the step's global completion-token count (token-level loss). Returns
    this call's share of L_GRPO. Zero-advantage sequences are skipped: their gradient is exactly 0."""
    work = [(s, a) for s, a in zip(seqs, advantages) if a != 0]
    total, head = 0.0, model.get_output_embeddings()
    for i in range(0, len(work), args.micro_batch_size):
        mb = work[i:i + args.micro_batch_size]
        with amp():
            hidden, targets = completion_hidden(model, [s for s, _ in mb], device)  # [N, H], [N]
            adv = torch.tensor([a for (_, c), a in mb for _ in c], device=device)  # [N] per-token advantage
            target_logit, lse = head_gather_lse(hidden, head, targets[:, None], chunk=args.logit_chunk)  # [N, 1], [N]
            logp = target_logit[:, 0] - lse  # [N] log π(target)
            loss = grpo_token_loss(logp, logp.detach(), adv, args.clip_eps).sum() / n_tokens
        loss.backward()
        total += loss.item()
    return total


def jsd_backward(model, teacher, pairs, n_tokens, args, device, amp=contextlib.nullcontext):
    """Accumulate ∇ λ·L_JSD into .grad. pairs: (plain_prompt_ids, privileged_prompt_ids, ȳ_ids).
    Teacher logits come from (x ⊕ y*, ȳ), student logits from (x, ȳ), aligned on ȳ's tokens.
    n_tokens: the step's global distillation-token count. Returns this call's share of L_JSD."""
    total, head, t_head = 0.0, model.get_output_embeddings(), teacher.get_output_embeddings()
    for i in range(0, len(pairs), args.micro_batch_size):
        mb = pairs[i:i + args.micro_batch_size]
        with torch.no_grad(), amp():  # the teacher carries no gradient (drifting or frozen)
            t_hidden, _ = completion_hidden(teacher, [(t, y) for _, t, y in mb], device)  # [N, H]
            values, indices = head_topk(t_hidden, t_head, args.topk, chunk=args.logit_chunk)  # [N, k]
            del t_hidden
        with amp():
            hidden, _ = completion_hidden(model, [(s, y) for s, _, y in mb], device)  # [N, H]
            logits_k, lse = head_gather_lse(hidden, head, indices, chunk=args.logit_chunk)  # [N, k], [N]
            jsd = jsd_from_logq(logits_k - lse[:, None], values)  # [N]
            loss = jsd.sum() / n_tokens
        (args.distill_weight * loss).backward()
        total += loss.item()
    return total


# ----------------------------------------------------------------------------------------------
# torchrun: each rank generates for its shard of the step's prompts; token counts, statistics and
# gradients are summed over ranks, so the loss is normalised by global token counts (PAPER.md).
# Gradients are all-reduced once per step rather than by DDP's per-backward hooks, because ranks
# run different numbers of micro-batches (their cliff counts differ).


def world():
    """(rank, world_size); (0, 1) without torchrun."""
    return (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)


def all_sum(values, device):
    """Sum a list of floats over ranks."""
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    if world()[1] > 1:
        dist.all_reduce(t)
    return t.tolist()


def all_reduce_grads(model):
    """Sum .grad over ranks (missing grads count as zeros) with one flat all-reduce."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if world()[1] > 1:
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat)
        torch.nn.utils.vector_to_parameters(flat, [p.grad for p in params])


def step_gradients(model, teacher, seqs, advantages, pairs, args, device, amp=contextlib.nullcontext):
    """∇(L_GRPO + λ L_JSD) for this rank's rollouts (seqs, advantages) and distillation pairs, summed
    over ranks into .grad. Both losses are divided by the global token counts, so the gradient does
    not depend on how the batch is split. Returns (L_GRPO, L_JSD, N_GRPO tokens, N_JSD tokens)."""
    n_grpo, n_jsd = all_sum([sum(len(c) for _, c in seqs), sum(len(y) for *_, y in pairs)], device)
    loss_grpo = grpo_backward(model, seqs, advantages, max(n_grpo, 1), args, device, amp)
    loss_jsd = jsd_backward(model, teacher, pairs, n_jsd, args, device, amp) if pairs and args.distill_weight > 0 else 0.0
    all_reduce_grads(model)
    loss_grpo, loss_jsd = all_sum([loss_grpo, loss_jsd], device)
    return loss_grpo, loss_jsd, int(n_grpo), int(n_jsd)


# ----------------------------------------------------------------------------------------------
# Data: the 95/5 split with the seed, and a deterministic prompt stream (epoch e is a fresh
# permutation seeded with seed + e), so a checkpoint only needs the stream position.


def split_train_val(rows, val_fraction, eval_problems, seed):
    perm = np.random.default_rng(seed).permutation(len(rows))
    n_val = max(1, int(round(val_fraction * len(rows)))) if len(rows) > 1 else 0
    val = [rows[i] for i in perm[:n_val][:eval_problems]]
    return [rows[i] for i in perm[n_val:]], val


def prompt_stream(n_rows, position, count, seed):
    """Indices of `count` prompts starting at `position` of the infinite shuffled stream."""
    out = []
    while len(out) < count:
        epoch, offset = divmod(position, n_rows)
        perm = np.random.default_rng(seed + 1 + epoch).permutation(n_rows)
        take = perm[offset:offset + count - len(out)]
        out += take.tolist()
        position += len(take)
    return out


# ----------------------------------------------------------------------------------------------
# Checkpoints: model, tokenizer, optimiser, scheduler, frozen teacher, RNG states, stream position
# and step, written to a temporary folder and renamed, the last --keep-checkpoints kept.


def rng_state():
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(s):
    random.setstate(s["python"]), np.random.set_state(s["numpy"]), torch.set_rng_state(s["torch"])
    if s["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def save_checkpoint(out_dir, step, model, tokenizer, teacher, optimizer, scheduler, trainer_state, keep):
    """Rank 0 writes; RNG states are per rank (rng-<rank>.pt), so every rank calls this."""
    rank, ws = world()
    ckpt_root = os.path.join(out_dir, "checkpoints")
    final, tmp = os.path.join(ckpt_root, f"step-{step:06d}"), os.path.join(ckpt_root, f"step-{step:06d}.tmp")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(os.path.join(tmp, "model"))
        tokenizer.save_pretrained(os.path.join(tmp, "model"))
        if teacher is not model:
            teacher.save_pretrained(os.path.join(tmp, "teacher"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
                    **trainer_state}, os.path.join(tmp, "trainer.pt"))
    if ws > 1:
        dist.barrier()
    torch.save(rng_state(), os.path.join(tmp, f"rng-{rank}.pt"))
    if ws > 1:
        dist.barrier()
    if rank == 0:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)  # atomic: a checkpoint folder either exists whole or not at all
        for old in sorted(d for d in os.listdir(ckpt_root) if d.startswith("step-") and not d.endswith(".tmp"))[:-keep]:
            shutil.rmtree(os.path.join(ckpt_root, old), ignore_errors=True)
    if ws > 1:
        dist.barrier()
    return final


def find_checkpoint(resume, out_dir):
    if resume != "latest":
        if not os.path.isfile(os.path.join(resume, "trainer.pt")):
            raise FileNotFoundError(f"--resume {resume}: not a checkpoint folder (no trainer.pt)")
        return resume
    root = os.path.join(out_dir, "checkpoints")
    found = sorted(d for d in os.listdir(root) if d.startswith("step-") and not d.endswith(".tmp")) if os.path.isdir(root) else []
    if not found:
        raise FileNotFoundError(f"--resume: no checkpoint in {root}")
    return os.path.join(root, found[-1])


def append_jsonl(path, row):
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}  # strict JSON
    with open(path, "a") as f:
        f.write(json.dumps(clean) + "\n")


def truncate_jsonl(path, max_step):
    """Drop rows written after the checkpoint we resume from, so metrics never repeat a step."""
    if os.path.exists(path):
        with open(path) as f:
            rows = [l for l in f if l.strip() and json.loads(l).get("step", 0) <= max_step]
        with open(path, "w") as f:
            f.writelines(rows)


class TrainingError(RuntimeError):
    """A run that cannot go on (e.g. too many non-finite steps in a row)."""


def validate(model, tokenizer, val_rows, args, reward_fn, amp):
    """Greedy accuracy and pass@k on the validation problems, sharded over ranks and gathered."""
    rank, ws = world()
    shard = val_rows[rank::ws]
    with amp():
        res = evaluate(model, tokenizer, [r["problem"] for r in shard], [r["answer"] for r in shard], n=args.eval_n,
                       ks=args.eval_k, temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                       batch_size=args.generation_batch_size, max_seq_len=args.max_seq_len, progress=rank == 0,
                       reward_fn=reward_fn)
    per_problem = res["per_problem"]
    if ws > 1:
        gathered = [None] * ws
        dist.all_gather_object(gathered, per_problem)
        per_problem = [p for g in gathered for p in g]
    return summarize(per_problem, args.eval_k, args.eval_n)


def train(args, train_rows=None, val_rows=None, reward_fn=None):
    """Algorithm 1 for args.max_steps steps. Rows are dicts with problem, answer (and solution);
    without rows, args.dataset is loaded and split 95/5. Returns a summary dict."""
    rank, ws = world()
    device = torch.device(f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu")
    amp = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else contextlib.nullcontext
    if reward_fn is None:
        from verify import reward as reward_fn
    out = args.output_dir
    os.makedirs(out, exist_ok=True)
    ckpt = find_checkpoint(args.resume, out) if args.resume else None
    if train_rows is None:
        rows = load_problems(args.dataset, split=args.split, config=args.dataset_config, problem_key=args.problem_key,
                             answer_key=args.answer_key, solution_key=args.solution_key)
        train_rows, held_out = split_train_val(rows, args.val_fraction, args.eval_problems, args.seed)
        val_rows = held_out if val_rows is None else val_rows
    if not train_rows:
        raise DataError("no training problems after the train/validation split")

    model, tokenizer = load_model(os.path.join(ckpt, "model") if ckpt else args.model, device=device, dtype=torch.float32)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if ws > 1:  # every rank starts from rank 0's weights
        for t in model.state_dict().values():
            dist.broadcast(t, 0)
    teacher = model  # drifting teacher: the current weights, used under no_grad
    if args.teacher == "frozen" and args.distill_weight > 0:  # frozen teacher: a copy of the initial weights
        teacher = (load_model(os.path.join(ckpt, "teacher"), device=device, dtype=torch.float32)[0] if ckpt
                   else copy.deepcopy(model))
        teacher.requires_grad_(False).eval()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=tuple(args.adam_betas), eps=args.adam_eps,
                                  weight_decay=args.weight_decay)
    warm = args.warmup_steps  # linear warm-up from 0.1x to 1x over `warm` steps, then constant
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 if s >= warm else 0.1 + 0.9 * s / warm)
    eos_ids = eos_token_ids(tokenizer, model)
    state = {"step": 0, "data_pos": 0, "bad_steps": 0, "skipped_steps": 0, "best": {}}
    paths = {k: os.path.join(out, k + ".jsonl") for k in ("metrics", "samples", "eval")}
    if ckpt:
        saved = torch.load(os.path.join(ckpt, "trainer.pt"), weights_only=False)
        optimizer.load_state_dict(saved.pop("optimizer")), scheduler.load_state_dict(saved.pop("scheduler"))
        state.update({k: v for k, v in saved.items() if k in state})
        rng_file = os.path.join(ckpt, f"rng-{rank}.pt")
        if os.path.exists(rng_file):
            set_rng_state(torch.load(rng_file, weights_only=False))
        else:  # a rank the checkpoint did not have (larger world size)
            s_ = args.seed + rank + 1000 * state["step"]
            random.seed(s_), np.random.seed(s_), torch.manual_seed(s_)
        if rank == 0:
            for path in paths.values():
                truncate_jsonl(path, state["step"])
            root = os.path.join(out, "checkpoints")  # later checkpoints belong to the abandoned continuation
            for d in os.listdir(root) if os.path.isdir(root) else []:
                if d.startswith("step-") and int(d[5:].split(".")[0]) > state["step"]:
                    shutil.rmtree(os.path.join(root, d), ignore_errors=True)
            print(f"resumed from {ckpt} at step {state['step']}")
    else:
        random.seed(args.seed + rank), np.random.seed(args.seed + rank), torch.manual_seed(args.seed + rank)

    stop = {"signal": None}  # Ctrl-C / SIGTERM: finish the step, save a checkpoint, exit

    def on_signal(signum, frame):
        if stop["signal"] is not None:
            raise KeyboardInterrupt
        stop["signal"] = signum
        print(f"\nsignal {signum}: finishing step {state['step'] + 1}, then saving a checkpoint (again to quit now)", flush=True)

    main_thread = threading.current_thread() is threading.main_thread()  # signal handlers need the main thread
    handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)} if main_thread else {}
    n_tok = lambda text: len(tokenizer(text, add_special_tokens=False).input_ids)
    P, G = args.prompts_per_step, args.num_generations
    gen = dict(temperature=args.temperature, max_new_tokens=args.max_new_tokens, batch_size=args.generation_batch_size,
               max_seq_len=args.max_seq_len, eos_ids=eos_ids)
    t_run = time.time()
    if rank == 0:
        print(f"HDPO | model {args.model} | {len(train_rows)} train / {len(val_rows or [])} val problems | world {ws} | "
              f"λ={args.distill_weight} teacher={args.teacher} | {P}x{G} rollouts/step | device {device}")
    try:
        while state["step"] < args.max_steps:
            t0 = time.time()
            idx = prompt_stream(len(train_rows), state["data_pos"], P, args.seed)
            state["data_pos"] += P
            batch = [train_rows[i] for i in idx[rank::ws]]  # this rank's shard of the step's prompts
            plain = [chat_prompt(tokenizer, r["problem"]) for r in batch]
            keep = [n_tok(p) < args.max_seq_len for p in plain]  # a prompt must leave room for a completion
            batch, plain = [r for r, k in zip(batch, keep) if k], [p for p, k in zip(plain, keep) if k]

            # Algorithm 1, line 1: G rollouts per prompt from π_θ(· | x), batched across the step's prompts
            with amp():
                rollouts = generate(model, tokenizer, plain, num_samples=G, **gen)  # prompt-major, len P*G
            # line 2: binary reward; group advantages
            rewards = torch.tensor([reward_fn(o["text"], batch[i // G]["answer"]) for i, o in enumerate(rollouts)],
                                   dtype=torch.float32).view(len(batch), G)  # [P, G]
            advantages = group_advantages(rewards, args.advantage)  # [P, G]
            # line 3: cliffs, the prompts whose G rollouts all failed
            cliffs = find_cliffs(rewards)  # [P] bool
            # lines 4-5: privileged rollouts ȳ ~ π_θ(· | x ⊕ y*) on cliffs, keep the correct ones (R = 1)
            pairs, priv_rollouts, priv_ok = [], [], []
            if args.distill_weight > 0 and args.max_cliffs > 0 and bool(cliffs.any()):
                chosen = cliffs.nonzero()[:, 0].tolist()[:math.ceil(args.max_cliffs / ws)]
                priv = {i: chat_prompt(tokenizer, privileged_prompt(batch[i]["problem"], batch[i]["answer"],
                        batch[i].get("solution") if args.privileged == "solution" else None)) for i in chosen}
                chosen = [i for i in chosen if n_tok(priv[i]) < args.max_seq_len]
                with amp():
                    priv_rollouts = generate(model, tokenizer, [priv[i] for i in chosen], num_samples=args.privileged_generations, **gen)
                owners = [chosen[j // args.privileged_generations] for j in range(len(priv_rollouts))]
                priv_ok = r1_filter([o["text"] for o in priv_rollouts], [batch[i]["answer"] for i in owners], reward_fn)
                pairs = [(rollouts[i * G]["prompt_ids"], o["prompt_ids"], o["completion_ids"])
                         for o, i, ok in zip(priv_rollouts, owners, priv_ok) if ok]
            t_gen = time.time() - t0

            # line 6: L_GRPO + λ L_JSD, normalised by global token counts; line 7: one update
            optimizer.zero_grad(set_to_none=True)
            model.train()
            seqs = [(o["prompt_ids"], o["completion_ids"]) for o in rollouts]
            loss_grpo, loss_jsd, n_grpo, n_jsd = step_gradients(model, teacher, seqs, advantages.flatten().tolist(),
                                                                pairs, args, device, amp)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm).item()
            lr = scheduler.get_last_lr()[0]
            finite = all(math.isfinite(v) for v in (grad_norm, loss_grpo, loss_jsd))
            if finite:
                optimizer.step()
                state["bad_steps"] = 0
            else:  # non-finite loss or gradient: no update, counted and logged
                optimizer.zero_grad(set_to_none=True)
                state["bad_steps"] += 1
                state["skipped_steps"] += 1
            scheduler.step()
            state["step"] += 1
            step = state["step"]

            s = all_sum([len(batch), cliffs.sum(), rewards.sum(), rewards.numel(), (rewards.sum(1) == G).sum(),
                         len(priv_rollouts), sum(priv_ok), len(pairs), sum(not o["finished"] for o in rollouts)], device)
            row = {"step": step, "step_time_s": round(time.time() - t0, 3), "generation_time_s": round(t_gen, 3),
                   "train_time_s": round(time.time() - t0 - t_gen, 3), "reward_mean": s[2] / max(s[3], 1),
                   "cliff_fraction": s[1] / max(s[0], 1), "num_cliffs": int(s[1]), "solved_fraction": s[4] / max(s[0], 1),
                   "privileged_rollouts": int(s[5]), "privileged_pass_rate": s[6] / s[5] if s[5] else None,
                   "distill_sequences": int(s[7]), "distill_tokens": int(n_jsd), "grpo_tokens": int(n_grpo),
                   "completion_len_mean": n_grpo / max(s[3], 1), "truncated_fraction": s[8] / max(s[3], 1),
                   "loss_grpo": loss_grpo, "loss_jsd": loss_jsd, "loss": loss_grpo + args.distill_weight * loss_jsd,
                   "grad_norm": grad_norm, "lr": lr, "skipped": not finite, "skipped_steps": state["skipped_steps"],
                   "world_size": ws}
            if args.eval_every and val_rows and (step % args.eval_every == 0 or step == args.max_steps):
                res = validate(model, tokenizer, val_rows, args, reward_fn, amp)
                for k, v in res.items():
                    if k.startswith(("greedy", "pass@")) and v is not None:
                        state["best"][k] = max(state["best"].get(k, v), v)
                row.update({"val_" + k: v for k, v in res.items() if k.startswith(("greedy", "pass@"))})
                if rank == 0:
                    append_jsonl(paths["eval"], {"step": step, **res, "best": dict(state["best"])})
            row["step_time_s"] = round(time.time() - t0, 3)  # the whole step: generation to update (and validation)
            if rank == 0:
                append_jsonl(paths["metrics"], row)
                samples = [{"step": step, "kind": "plain", "problem": batch[i // G]["problem"], "answer": batch[i // G]["answer"],
                            "completion": o["text"], "reward": float(rewards.view(-1)[i])} for i, o in enumerate(rollouts)]
                samples += [{"step": step, "kind": "privileged", "problem": batch[i]["problem"], "answer": batch[i]["answer"],
                             "completion": o["text"], "reward": float(ok)} for o, i, ok in zip(priv_rollouts, owners, priv_ok)] if priv_rollouts else []
                for smp in [x for x in samples if x["kind"] == "plain"][:args.samples_per_step] + [x for x in samples if x["kind"] == "privileged"][:args.samples_per_step]:
                    append_jsonl(paths["samples"], smp)
                ppr = "-" if row["privileged_pass_rate"] is None else f"{row['privileged_pass_rate']:.2f}"
                vals = [f"{k[4:]} {v:.3f}" for k, v in row.items() if k.startswith("val_") and v is not None]
                val = " | val " + " ".join(vals) if vals else ""
                print(f"step {step}/{args.max_steps} | reward {row['reward_mean']:.3f} | cliffs {row['num_cliffs']}/{int(s[0])} | "
                      f"priv pass {ppr} | distill {row['distill_sequences']} seq {row['distill_tokens']} tok | "
                      f"L_grpo {loss_grpo:+.4f} L_jsd {loss_jsd:.4f} | gnorm {grad_norm:.3f} | lr {lr:.2e} | "
                      f"{row['step_time_s']:.1f}s (gen {t_gen:.1f}s){' | SKIPPED (non-finite)' if not finite else ''}{val}", flush=True)
            if state["bad_steps"] >= args.max_bad_steps:
                raise TrainingError(f"{state['bad_steps']} non-finite steps in a row (loss or gradient is NaN/inf); "
                                    f"stopping at step {step}. Lower --lr or check the data; --debug for details")
            stopping = all_sum([stop["signal"] is not None], device)[0] > 0
            if stopping or (args.save_every and step % args.save_every == 0) or step == args.max_steps:
                path = save_checkpoint(out, step, model, tokenizer, teacher, optimizer, scheduler,
                                       {k: v for k, v in state.items() if k != "step"}, args.keep_checkpoints)
                if rank == 0:
                    print(f"checkpoint: {path}", flush=True)
            if stopping:
                break
    finally:
        for s_, h in handlers.items():
            signal.signal(s_, h)
    if rank == 0 and not stop["signal"]:
        model.save_pretrained(os.path.join(out, "final"))
        tokenizer.save_pretrained(os.path.join(out, "final"))
    if ws > 1:
        dist.barrier()  # every rank returns with the run's files written
    return {"steps": state["step"], "time_s": time.time() - t_run, "output_dir": out, "best_eval": state["best"],
            "skipped_steps": state["skipped_steps"], "interrupted": stop["signal"] is not None}


def main(argv=None):
    args = parse_args(argv)
    quiet_libraries()  # no datasets/transformers progress bars: errors stay one line on stderr
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():  # started by torchrun
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        if args.demo:
            import demo
            demo.run_demo(args, sys.argv[1:] if argv is None else argv)  # the flags the user gave
        elif train(args)["interrupted"]:
            sys.exit(130)  # stopped by Ctrl-C / SIGTERM after saving a checkpoint: not a finished run
    except (DataError, ModelLoadError, TrainingError, FileNotFoundError) as e:
        if args.debug:
            raise
        print(f"hdpo.py: error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("hdpo.py: interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
