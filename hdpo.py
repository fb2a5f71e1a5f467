"""HDPO: Hybrid Distillation Policy Optimization (Ding, arXiv 2603.23871): the algorithm, one file.

GRPO for math reasoning, plus privileged self-distillation on "cliff" prompts: prompts whose G
rollouts all fail, where GRPO's advantages (and so its gradient) are exactly zero. For a cliff
prompt x with ground truth y*, the same model sees x ⊕ y* (the problem with the answer written
into it), its correct solutions ȳ are kept (R = 1 filter), and the privileged model's top-k
token distribution is distilled into the plain model on ȳ with a Jensen-Shannon loss:

    L_HDPO = L_GRPO + λ · L_JSD                                   (the paper's loss)

    python hdpo.py --model Qwen/Qwen2.5-Math-1.5B-Instruct          # the paper's setting (1 GPU)
    torchrun --nproc_per_node 8 hdpo.py --model ...                 # the paper's 8 GPUs
    python demo.py                                                  # offline CPU demo

Top to bottom: advantages, cliffs, x ⊕ y*, R = 1 (Algorithm 1, lines 2-5) → the losses and
their gradients (line 6) → `train`, Algorithm 1 line by line → flags. Departures from the paper:
- Generation uses this repository's engine (engine.py); the paper uses vLLM.
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
- The 95/5 split holds out whole problems (OpenMathInstruct-2 repeats some across rows).
- Weight decay (0.01) applies to every parameter, biases and norms included (the paper is silent;
  at lr 1e-6 over 2,000 steps it shrinks a weight by a factor of at most 2e-5).
Also read: forward.py (the losses' forward), engine.py (generation), data.py, reinject.py.
"""

import argparse
import contextlib
import copy
import math
import os
import time
from typing import NamedTuple

import torch

import reinject
from data import chat_prompt, prompt_stream
from engine import generate
from forward import (
    completion_hidden,
    grouped,
    head_gather_lse,
    head_topk,
    logit_transform,
    pack_micro_batches,
    shares_prompts,
)
from harness.checkpoint import StopOnSignal
from harness.distributed import all_reduce_grads, all_sum
from harness.loading import load_model
from harness.run import finish_run, record_step, run_command, setup_run
from harness.trackers import TRACKERS

LN2 = math.log(2.0)

# ----------------------------------------------------------------------------------------------
# Rewards, advantages, cliffs (Algorithm 1, lines 2-3). Pure functions on [P, G] tensors.


def group_advantages(rewards, kind="loo"):
    """rewards [P, G] -> advantages [P, G]. 'loo': A_i = r_i - mean_{j != i} r_j (the paper's
    hyper-parameter table); 'grpo': (r - mean) / (std + 1e-4) (Algorithm 1, line 7)."""
    G = rewards.shape[1]
    if kind == "loo":
        baseline = (rewards.sum(1, keepdim=True) - rewards) / (G - 1)  # [P, G] mean of the others
        return rewards - baseline
    mean, std = rewards.mean(1, keepdim=True), rewards.std(1, keepdim=True)  # [P, 1]
    return (rewards - mean) / (std + 1e-4)


def find_cliffs(rewards):
    """rewards [P, G] -> [P] bool: prompts whose rewards sum to 0 (every rollout failed)."""
    return rewards.sum(1) == 0


# ----------------------------------------------------------------------------------------------
# The privileged prompt x ⊕ y* (Algorithm 1, line 4) and the R = 1 filter (line 5). The paper
# says only "inject ground truth y* into the prompt"; this wording is ours. The answer goes after
# the problem, so the teacher's context starts like the student's; it asks for a whole solution,
# because ȳ is what the student is trained on; it repeats the \boxed{} instruction, so the
# verifier can score ȳ. Filled with str.replace, never str.format: answers contain braces.

PRIVILEGED_TEMPLATE = (
    "{problem}\n\n"
    "(Hint: the correct final answer is {answer}. Write a complete step-by-step solution "
    "that arrives at it, and put the final answer within \\boxed{}.)"
)


def privileged_prompt(problem, answer, solution=None):
    """x ⊕ y*: the problem with the ground truth written into it (and, with `solution`, the
    reference solution: --privileged solution). Longer than the plain prompt x."""
    hint = answer if solution is None else (answer + ". A reference solution:\n" + solution + "\n")
    return PRIVILEGED_TEMPLATE.replace("{answer}", hint).replace("{problem}", problem)


def r1_filter(completions, answers, reward_fn):
    """Algorithm 1, line 5: keep the privileged rollouts whose reward is 1. -> list of bool."""
    return [reward_fn(c, a) >= 1 for c, a in zip(completions, answers)]


# ----------------------------------------------------------------------------------------------
# Per-token losses. Pure functions: logits in, one value per position out.


def grpo_token_loss(logp, old_logp, advantages, clip_eps=0.2):
    """PPO-clipped policy-gradient loss per token. logp, old_logp, advantages: [N] -> [N]."""
    ratio = torch.exp(logp - old_logp)  # [N]
    clipped = ratio.clamp(1 - clip_eps, 1 + clip_eps)  # [N]
    return -torch.min(ratio * advantages, clipped * advantages)


def jsd_from_topk(student_logits, teacher_topk_values, teacher_topk_indices):
    """JSD_k per position between the teacher's top-k distribution P (renormalised over its k
    tokens) and the student's full softmax Q. student_logits [..., V]; teacher top-k [..., k].
    Exact for the truncated teacher: outside the top-k, P = 0 and each token adds ½·q·ln 2."""
    student_logits = student_logits.float()
    lse = torch.logsumexp(student_logits, -1, keepdim=True)  # [..., 1]
    log_q = student_logits.gather(-1, teacher_topk_indices) - lse  # [..., k]
    return jsd_from_logq(log_q, teacher_topk_values)


def jsd_from_logq(log_q, teacher_topk_values):
    """jsd_from_topk from the student's log-probabilities on the teacher's top-k tokens,
    log_q [..., k]: all the student side needs (its mass outside the top-k is 1 - Σ exp(log_q))."""
    log_p = torch.log_softmax(teacher_topk_values.float(), -1)  # [..., k] teacher, renormalised
    log_m = torch.logaddexp(log_p, log_q) - LN2  # [..., k] log of M = (P + Q) / 2
    q = log_q.exp()  # [..., k]
    kl_pm = (log_p.exp() * (log_p - log_m)).sum(-1)  # [...] KL(P || M)
    tail = (1 - q.sum(-1)).clamp_min(0) * LN2  # [...] Q's mass outside the top-k, where M = Q/2
    kl_qm = (q * (log_q - log_m)).sum(-1) + tail  # [...] KL(Q || M)
    return 0.5 * kl_pm + 0.5 * kl_qm


def jsd_topk(student_logits, teacher_logits, k=64):
    """JSD_k(π_T || π_θ) per position (the paper's loss, k = 64). [..., V] x [..., V] -> [...].
    The teacher side carries no gradient; natural log, bounded by ln 2."""
    with torch.no_grad():
        k = min(k, teacher_logits.shape[-1])
        values, indices = teacher_logits.float().topk(k, -1)  # [..., k]
    return jsd_from_topk(student_logits, values, indices)


# ----------------------------------------------------------------------------------------------
# Memory-bounded gradients (Algorithm 1, line 6): each loss's forward and backward over
# micro-batches packed by tokens, a group's prompt forwarded once, the lm_head in chunks (all
# three in forward.py). Both losses use the distribution the rollouts were sampled from: the
# model's own logits (its scale or soft-cap) divided by --temperature.


def grpo_backward(model, seqs, advantages, n_tokens, args, device, amp=contextlib.nullcontext):
    """Accumulate ∇ L_GRPO into .grad. seqs: (prompt_ids, completion_ids); advantages: one float
    per sequence; n_tokens: the step's global completion-token count (token-level loss). Returns
    this call's share of L_GRPO. Zero-advantage sequences are skipped: their gradient is 0."""
    work = [(p, c, a) for (p, c), a in zip(seqs, advantages) if a != 0]
    prompts, owner = grouped([p for p, _, _ in work])
    comps, shared = [c for _, c, _ in work], shares_prompts(model, args.max_seq_len)
    total, head = 0.0, model.get_output_embeddings()
    t = logit_transform(model, args.temperature)  # the sampled distribution: softmax(logits / T)
    lens = [len(p) for p in prompts], [len(c) for c in comps]
    for mb in pack_micro_batches(*lens, owner, args.micro_batch_tokens, shared):
        mb_comps, mb_owner = [comps[i] for i in mb], [owner[i] for i in mb]
        with amp():
            hidden, targets = completion_hidden(model, prompts, mb_comps, mb_owner, device, shared)
            adv = torch.tensor([work[i][2] for i in mb for _ in comps[i]], device=device)  # [N]
            target_logit, lse = head_gather_lse(hidden, head, targets[:, None], args.logit_chunk, t)
            logp = target_logit[:, 0] - lse  # [N] log π(target)
            loss = grpo_token_loss(logp, logp.detach(), adv, args.clip_eps).sum() / n_tokens
        loss.backward()
        total += loss.item()
    return total


def jsd_backward(model, teacher, pairs, n_tokens, args, device, amp=contextlib.nullcontext):
    """Accumulate ∇ λ·L_JSD into .grad. pairs: (plain_prompt_ids, privileged_prompt_ids, ȳ_ids).
    Teacher logits come from (x ⊕ y*, ȳ), student logits from (x, ȳ), aligned on ȳ's tokens, both
    at the sampling temperature. n_tokens: the step's global distillation-token count. Returns
    this call's share of L_JSD."""
    total, head, t_head = 0.0, model.get_output_embeddings(), teacher.get_output_embeddings()
    t = logit_transform(model, args.temperature)  # both sides: softmax(logits / T)
    t_teacher = logit_transform(teacher, args.temperature)
    # a group is one (x, x ⊕ y*): a cliff's rollouts share both; two cliffs with the same problem
    # text x (another answer or solution in x ⊕ y*) are two groups, each with its own teacher
    contexts, owner = grouped([(tuple(x), tuple(p)) for x, p, _ in pairs])
    plain, privileged = [list(x) for x, _ in contexts], [list(p) for _, p in contexts]
    ys, shared = [y for _, _, y in pairs], shares_prompts(model, args.max_seq_len)
    lens = [max(len(x), len(p)) for x, p in zip(plain, privileged)], [len(y) for y in ys]
    for mb in pack_micro_batches(*lens, owner, args.micro_batch_tokens, shared):
        mb_ys, mb_owner = [ys[i] for i in mb], [owner[i] for i in mb]
        with torch.no_grad(), amp():  # the teacher carries no gradient (drifting or frozen)
            t_hidden, _ = completion_hidden(teacher, privileged, mb_ys, mb_owner, device, shared)
            values, indices = head_topk(t_hidden, t_head, args.topk, args.logit_chunk, t_teacher)
            del t_hidden
        with amp():
            hidden, _ = completion_hidden(model, plain, mb_ys, mb_owner, device, shared)  # [N, H]
            logits_k, lse = head_gather_lse(hidden, head, indices, args.logit_chunk, t)  # [N, k]
            jsd = jsd_from_logq(logits_k - lse[:, None], values)  # [N]
            loss = jsd.sum() / n_tokens
        (args.distill_weight * loss).backward()
        total += loss.item()
    return total


def step_gradients(
    model, teacher, seqs, advantages, pairs, args, device, amp=contextlib.nullcontext
):
    """∇(L_GRPO + λ L_JSD) for this rank's rollouts (seqs, advantages) and distillation pairs,
    summed over ranks into .grad. Both losses are divided by the global token counts, so the
    gradient does not depend on how the batch is split.
    Returns (L_GRPO, L_JSD, N_GRPO tokens, N_JSD tokens)."""
    n_local = [sum(len(c) for _, c in seqs), sum(len(y) for *_, y in pairs)]
    n_grpo, n_jsd = all_sum(n_local, device)
    loss_grpo = grpo_backward(model, seqs, advantages, max(n_grpo, 1), args, device, amp)
    loss_jsd = 0.0
    if pairs and args.distill_weight > 0:
        loss_jsd = jsd_backward(model, teacher, pairs, n_jsd, args, device, amp)
    all_reduce_grads(model)
    loss_grpo, loss_jsd = all_sum([loss_grpo, loss_jsd], device)
    return loss_grpo, loss_jsd, int(n_grpo), int(n_jsd)


# ----------------------------------------------------------------------------------------------
# The training loop: Algorithm 1, one line of the paper per statement, then its helpers in the
# order it calls them. What the step produced goes to the bookkeeping as one record (Step).


class Batch(NamedTuple):
    """Algorithm 1, line 1: one step's prompts on this rank."""

    rows: list  # the problems: {"problem", "answer", "solution"}
    prompts: list  # their chat prompts x
    indices: list  # their training-row indices
    reinjected: list  # per prompt: back through re-injection (True) or fresh from the stream
    skipped: int  # prompts left out: no room to generate under --max-seq-len


class Privileged(NamedTuple):
    """Algorithm 1, line 4: the privileged rollouts ȳ ~ π_θ(· | x ⊕ y*) of this rank's cliffs."""

    owners: list  # the batch index of each rollout's prompt
    rollouts: list  # engine.generate dicts; their prompt_ids are x ⊕ y*
    skipped: int  # cliffs whose x ⊕ y* leaves no room to generate under --max-seq-len


class Step(NamedTuple):
    """What one step produced, for the statistics, logs and samples (harness/run.py)."""

    batch: Batch
    rollouts: list  # G per prompt, prompt-major
    rewards: torch.Tensor  # [P, G]
    cliffs: torch.Tensor  # [P] bool
    privileged: Privileged
    correct: list  # R = 1 per privileged rollout
    pairs: list  # T: (x ids, x ⊕ y* ids, ȳ ids), the distilled pairs
    losses: tuple  # (L_GRPO, L_JSD, N_GRPO tokens, N_JSD tokens)
    update: dict  # grad_norm, lr, skipped, skipped_steps
    requeued: int  # prompts queued for re-injection (0 when it is off)
    times: tuple  # (start, seconds of generation)


def train(args, train_rows=None, val_rows=None, reward_fn=None):
    """Algorithm 1 for args.max_steps steps. Rows are dicts with problem, answer (and solution);
    without rows, args.dataset is loaded and split 95/5. reward_fn(completion, answer) -> 0 or 1
    (default verify.reward). Returns a summary dict."""
    run = setup_run(args, train_rows, val_rows, reward_fn, build_teacher)
    model, G, device, amp = run.model, args.num_generations, run.device, run.amp
    with StopOnSignal() as stop:
        while run.state["step"] < args.max_steps:
            t0 = time.time()
            # Re-injection (off by default): former cliffs due back in RL take fresh prompts' place
            again = reinject.take_due(run.state, args)
            # Algorithm 1, line 1: a batch of prompts x; G rollouts each from π_θ(· | x)
            batch = next_prompts(run, again)
            with amp():
                rollouts = generate(model, run.tokenizer, batch.prompts, num_samples=G, **run.gen)
            # line 2: binary rewards; group advantages
            answers = [batch.rows[i // G]["answer"] for i in range(len(rollouts))]
            scores = [run.reward_fn(o["text"], a) for o, a in zip(rollouts, answers)]
            rewards = torch.tensor(scores, dtype=torch.float32).view(len(batch.rows), G)  # [P, G]
            advantages = group_advantages(rewards, args.advantage)  # [P, G]
            # line 3: cliffs, the prompts whose G rollouts all failed
            cliffs = find_cliffs(rewards)  # [P] bool
            # line 4: privileged rollouts ȳ ~ π_θ(· | x ⊕ y*) on (up to --max-cliffs) cliffs
            privileged = privileged_rollouts(run, batch.rows, cliffs)
            # line 5: keep the correct ones (R = 1): T = {(x, x ⊕ y*, ȳ)}
            owners, texts = privileged.owners, [o["text"] for o in privileged.rollouts]
            correct = r1_filter(texts, [batch.rows[i]["answer"] for i in owners], run.reward_fn)
            pairs = [
                (rollouts[i * G]["prompt_ids"], o["prompt_ids"], o["completion_ids"])
                for o, i, ok in zip(privileged.rollouts, owners, correct)
                if ok
            ]
            t_gen = time.time() - t0
            # line 6: ∇(L_GRPO + λ L_JSD), each loss divided by its global token count
            model.train()
            seqs = [(o["prompt_ids"], o["completion_ids"]) for o in rollouts]
            adv = advantages.flatten().tolist()
            losses = step_gradients(model, run.teacher, seqs, adv, pairs, args, device, amp)
            # line 7: θ ← θ − α ∇ (AdamW; clipped; no update if the loss or gradient is not finite)
            update = optimizer_step(run, losses)
            # Re-injection: the cliffs distilled in this update queue to return to RL later
            requeued = reinject.after_update(run.state, args, batch, owners, correct, update)

            # Bookkeeping, not the algorithm: statistics, validation, logs, checkpoint
            step = Step(batch=batch, rollouts=rollouts, rewards=rewards, cliffs=cliffs,
                        privileged=privileged, correct=correct, pairs=pairs, losses=losses,
                        update=update, requeued=requeued, times=(t0, t_gen))  # fmt: skip
            if record_step(run, step, stop):
                break
    return finish_run(run, stop)


def next_prompts(run, again=()):
    """Algorithm 1, line 1: the step's prompts from the shuffled stream, this rank's shard; a
    prompt must leave room for a completion under --max-seq-len. -> Batch.
    `again` (re-injection's training-row indices) fill the last places of the step's global list;
    the fresh prompts they replace are deferred, not dropped: the stream advances by the fresh
    prompts used, so every training prompt is still drawn once per pass."""
    args, rank, ws = run.args, run.rank, run.world_size
    fresh = args.prompts_per_step - len(again)
    idx = prompt_stream(len(run.train_rows), run.state["data_pos"], fresh, args.seed) + list(again)
    run.state["data_pos"] += fresh
    mine = list(range(len(idx)))[rank::ws]  # this rank's places in the step's global list
    prompts = {j: chat_prompt(run.tokenizer, run.train_rows[idx[j]]["problem"]) for j in mine}
    keep = [j for j in mine if run.n_tokens(prompts[j]) < args.max_seq_len]
    return Batch(
        rows=[run.train_rows[idx[j]] for j in keep],
        prompts=[prompts[j] for j in keep],
        indices=[idx[j] for j in keep],
        reinjected=[j >= fresh for j in keep],
        skipped=len(mine) - len(keep),
    )


def privileged_rollouts(run, rows, cliffs):
    """Algorithm 1, line 4: --privileged-generations rollouts from π_θ(· | x ⊕ y*) for each of the
    first ceil(--max-cliffs / world size) cliff prompts whose privileged prompt fits under
    --max-seq-len (x ⊕ y* is longer than x). -> Privileged."""
    args, n = run.args, run.args.privileged_generations
    if not (args.distill_weight > 0 and args.max_cliffs > 0 and bool(cliffs.any())):
        return Privileged([], [], 0)
    solution = lambda r: r.get("solution") if args.privileged == "solution" else None
    x_y = lambda r: privileged_prompt(r["problem"], r["answer"], solution(r))  # x ⊕ y*
    prompts = {i: chat_prompt(run.tokenizer, x_y(rows[i])) for i in cliffs.nonzero()[:, 0].tolist()}
    fits = [i for i in prompts if run.n_tokens(prompts[i]) < args.max_seq_len]
    chosen = fits[: math.ceil(args.max_cliffs / run.world_size)]  # the cap counts distillable ones
    with run.amp():
        rollouts = generate(
            run.model, run.tokenizer, [prompts[i] for i in chosen], num_samples=n, **run.gen
        )
    owners = [chosen[j // n] for j in range(len(rollouts))]
    return Privileged(owners, rollouts, skipped=len(prompts) - len(fits))


def optimizer_step(run, losses):
    """Algorithm 1, line 7: clip the gradient norm, then one AdamW step and one scheduler step;
    a non-finite loss or gradient makes no update and is counted. -> the update's record."""
    args, state = run.args, run.state
    grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), args.max_grad_norm).item()
    lr = run.scheduler.get_last_lr()[0]
    finite = all(math.isfinite(v) for v in (grad_norm, losses[0], losses[1]))
    if finite:
        run.optimizer.step()
        state["bad_steps"] = 0
    else:  # non-finite loss or gradient: no update, counted and logged
        state["bad_steps"] += 1
        state["skipped_steps"] += 1
    run.optimizer.zero_grad(set_to_none=True)  # gradients freed before the next generation
    run.scheduler.step()
    state["step"] += 1
    return {
        "grad_norm": grad_norm,
        "lr": lr,
        "skipped": not finite,
        "skipped_steps": state["skipped_steps"],
    }


# ----------------------------------------------------------------------------------------------
# The teacher (the paper's Table 2): drifting (the policy itself) or frozen (the initial weights).


def build_teacher(args, model, ckpt, device):
    """Drifting: the policy itself (used under no_grad). Frozen: a copy of the initial weights
    (restored from the checkpoint on --resume), in the compute dtype: bf16 on GPU, where it only
    ever runs under bf16 autocast, fp32 on CPU."""
    if args.teacher != "frozen" or args.distill_weight == 0:
        return model
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if ckpt:
        teacher, _ = load_model(os.path.join(ckpt, "teacher"), device, dtype, tokenizer=False)
    else:
        teacher = copy.deepcopy(model).to(dtype)
    return teacher.requires_grad_(False).eval()


# ----------------------------------------------------------------------------------------------
# Flags: the defaults are the paper's hyper-parameters (its Table 2). Then main.


def build_parser():
    p = argparse.ArgumentParser(
        description="HDPO: GRPO + privileged self-distillation on cliff prompts.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("model")
    g.add_argument("--model", default="Qwen/Qwen2.5-Math-1.5B-Instruct", help="hub id or folder")
    g.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="nvidia/OpenMathInstruct-2", help="hub id or a file")
    g.add_argument("--split", default="train_1M")
    g.add_argument("--dataset-config", default=None)
    g.add_argument("--problem-key", default=None)
    g.add_argument("--answer-key", default=None)
    g.add_argument("--solution-key", default=None)
    g.add_argument("--val-fraction", type=float, default=0.05, help="held out (95/5 split)")
    g = p.add_argument_group("GRPO (Algorithm 1, lines 1-2)")
    g.add_argument("--prompts-per-step", type=int, default=32)
    g.add_argument("--num-generations", type=int, default=16, help="G rollouts per prompt")
    g.add_argument("--temperature", type=float, default=1.0, help="T: sampled and trained on")
    g.add_argument("--max-seq-len", type=int, default=4096, help="prompt + completion (context)")
    g.add_argument("--max-new-tokens", type=int, default=4096, help="completion cap")
    g.add_argument("--advantage", choices=["loo", "grpo"], default="loo", help="loo or (r-μ)/σ")
    g.add_argument("--clip-eps", type=float, default=0.2)
    g = p.add_argument_group("HDPO (Algorithm 1, lines 3-6)")
    g.add_argument("--distill-weight", type=float, default=0.01, help="λ; 0 is plain GRPO")
    g.add_argument("--teacher", choices=["drifting", "frozen"], default="drifting")
    g.add_argument("--topk", type=int, default=64, help="teacher top-k of JSD_k")
    g.add_argument("--max-cliffs", type=int, default=32, help="cliff prompts distilled per step")
    g.add_argument("--privileged-generations", type=int, default=4, help="rollouts per cliff")
    g.add_argument("--privileged", choices=["answer", "solution"], default="answer")
    g = p.add_argument_group("re-injection (the paper's future work, reinject.py; off by default)")
    g.add_argument("--reinject-delay", type=int, default=0, help="D steps later (0: off)")
    g.add_argument("--reinject-max", type=int, default=8, help="M per step at most, oldest first")
    g = p.add_argument_group("optimisation (Algorithm 1, line 7)")
    g.add_argument("--max-steps", type=int, default=2000)
    g.add_argument("--lr", type=float, default=1e-6)
    g.add_argument("--weight-decay", type=float, default=0.01)
    g.add_argument("--adam-betas", type=float, nargs=2, default=[0.9, 0.999])
    g.add_argument("--adam-eps", type=float, default=1e-8)
    g.add_argument("--warmup-steps", type=int, default=50, help="linear from 0.1x, then constant")
    g.add_argument("--max-grad-norm", type=float, default=1.0)
    g.add_argument("--micro-batch-tokens", type=int, help="per forward (CPU 512; GPU: planned)")
    g.add_argument("--generation-batch-size", type=int, default=384, help="rows decoding at once")
    g.add_argument("--logit-chunk", type=int, help="positions per head chunk (GPU 1024, CPU 256)")
    g.add_argument("--seed", type=int, default=42)
    g = p.add_argument_group("validation")
    g.add_argument("--eval-every", type=int, default=10, help="0 turns validation off")
    g.add_argument("--eval-problems", type=int, default=2048)
    g.add_argument("--eval-n", type=int, default=8, help="samples per problem for pass@k")
    g.add_argument("--eval-k", type=int, nargs="+", default=[4, 8])
    g = p.add_argument_group("output and checkpoints")
    g.add_argument("--output-dir", default="runs/hdpo")
    g.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps (0: end)")
    g.add_argument("--keep-checkpoints", type=int, default=2)
    g.add_argument("--resume", nargs="?", const="latest", help="latest in --output-dir, or PATH")
    g.add_argument("--max-bad-steps", type=int, default=5, help="stop after N non-finite steps")
    g.add_argument("--samples-per-step", type=int, default=2, help="completions in samples.jsonl")
    g.add_argument("--report-to", nargs="+", choices=["none", *TRACKERS], default=["none"])
    g.add_argument("--tracker-project", default="hdpo", help="wandb / trackio project")
    g.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def parse_args(argv=None, parser=None):
    """The flags, checked (an invalid value is an argparse error, exit 2). parser: build_parser()
    unless given (demo.py passes hdpo's parser with its own defaults)."""
    p = parser or build_parser()
    a = p.parse_args(argv)
    checks = [
        (a.num_generations >= 2, "--num-generations must be >= 2 (GRPO needs a group)"),
        (a.topk >= 1, "--topk must be >= 1"),
        (a.distill_weight >= 0, "--distill-weight (λ) must be >= 0"),
        (a.prompts_per_step >= 1, "--prompts-per-step must be >= 1"),
        (a.max_steps >= 0, "--max-steps must be >= 0"),
        (a.lr > 0, "--lr must be > 0"),
        (a.clip_eps > 0, "--clip-eps must be > 0"),
        (a.temperature > 0, "--temperature must be > 0"),
        (a.max_new_tokens >= 1, "--max-new-tokens must be >= 1"),
        (a.max_seq_len >= 2, "--max-seq-len must be >= 2"),
        (a.max_cliffs >= 0, "--max-cliffs must be >= 0"),
        (a.privileged_generations >= 1, "--privileged-generations must be >= 1"),
        (a.reinject_delay >= 0, "--reinject-delay must be >= 0 (0 turns re-injection off)"),
        (a.reinject_max >= 1, "--reinject-max must be >= 1"),
        (min(a.micro_batch_tokens or 1, a.generation_batch_size, a.logit_chunk or 1) >= 1,
         "batch sizes must be >= 1"),
        (min(a.warmup_steps, a.eval_every, a.save_every) >= 0, "step counts must be >= 0"),
        (a.keep_checkpoints >= 1 and a.max_bad_steps >= 1,
         "--keep-checkpoints/--max-bad-steps must be >= 1"),
        (0 < a.val_fraction < 1, "--val-fraction must be in (0, 1)"),
        (a.report_to == ["none"] or "none" not in a.report_to, "--report-to none goes alone"),
        (a.eval_n >= 0, "--eval-n must be >= 0"),
        (a.max_grad_norm > 0, "--max-grad-norm must be > 0"),
        (all(0 <= b < 1 for b in a.adam_betas), "--adam-betas must be in [0, 1)"),
        (a.adam_eps >= 0 and a.weight_decay >= 0, "--adam-eps and --weight-decay must be >= 0"),
        (all(1 <= k <= max(a.eval_n, 1) for k in a.eval_k), "--eval-k must be in [1, --eval-n]"),
    ]  # fmt: skip
    for ok, msg in checks:
        if not ok:
            p.error(msg)
    if a.logit_chunk is None:  # GPU: big chunks keep kernels busy; CPU: 256 x 151,936 fp32 (156 MB)
        a.logit_chunk = 1024 if torch.cuda.is_available() else 256
    if a.micro_batch_tokens is None and not torch.cuda.is_available():
        a.micro_batch_tokens = 512  # benchmarks/README.md; GPU: harness.memory.plan_memory
    return a


def main(argv=None):
    args = parse_args(argv)
    run_command("hdpo.py", lambda: train(args), args.debug)


if __name__ == "__main__":
    main()
