"""A training run's setup and bookkeeping, the helpers of hdpo.train that are not Algorithm 1:
- setup_run: data, policy, teacher, optimiser, resume, generation settings, in one namespace;
- step_statistics: a step's metrics (summed over ranks) for metrics.jsonl and the console line;
- validate / validate_if_due: greedy accuracy and pass@k on the held-out problems every
  --eval-every steps, the best so far in eval.jsonl.
Logs, checkpoints and torchrun helpers are in plumbing.py.
"""

import contextlib
import os
import time
from types import SimpleNamespace

import torch
import torch.distributed as dist

from data import DataError, load_problems, split_train_val
from engine import eos_token_ids
from eval import evaluate, summarize
from plumbing import (
    Trackers,
    all_sum,
    compute_device,
    find_checkpoint,
    keep_freed_memory,
    load_model,
    log_eval,
    plan_memory,
    require_trackers,
    restore_checkpoint,
    rewind_outputs,
    save_args,
    seed_everything,
    set_checkpointing,
    world,
)


def setup_run(args, train_rows, val_rows, reward_fn, build_teacher):
    """Everything hdpo.train's loop needs, in one namespace: the data (loaded and split 95/5 when
    no rows are given), the policy, the teacher (build_teacher(args, model, ckpt, device): the
    policy itself or a frozen copy), AdamW and its warm-up, the memory plan on GPU, the trainer
    state (restored with --resume) and the generation settings."""
    rank, ws = world()
    device = compute_device()  # cuda:LOCAL_RANK (pinned by init_distributed), or cpu
    bf16 = lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    amp = bf16 if device.type == "cuda" else contextlib.nullcontext
    if device.type == "cpu":
        keep_freed_memory()
    if reward_fn is None:
        from verify import reward as reward_fn
    require_trackers(args.report_to)  # a missing tracker package fails before anything loads
    os.makedirs(args.output_dir, exist_ok=True)
    ckpt = find_checkpoint(args.resume, args.output_dir) if args.resume else None
    if train_rows is None:
        keys = dict(problem_key=args.problem_key, answer_key=args.answer_key)
        keys.update(solution_key=args.solution_key, with_solutions=args.privileged == "solution")
        rows = load_problems(args.dataset, split=args.split, config=args.dataset_config, **keys)
        train_rows, held_out = split_train_val(
            rows, args.val_fraction, args.eval_problems, args.seed
        )
        val_rows = held_out if val_rows is None else val_rows
    if not train_rows:
        raise DataError("no training problems after the train/validation split")

    model_dir = os.path.join(ckpt, "model") if ckpt else args.model
    model, tokenizer = load_model(model_dir, device=device, dtype=torch.float32)
    if args.gradient_checkpointing:
        set_checkpointing(model, True)
    if ws > 1:  # every rank starts from rank 0's weights
        for t in model.state_dict().values():
            dist.broadcast(t, 0)
    teacher = build_teacher(args, model, ckpt, device)
    if device.type == "cuda":  # size micro-batches (and checkpointing) to the card
        teacher_bytes = 0 if teacher is model else sum(p.nbytes for p in teacher.parameters())
        memory_line = plan_memory(args, model, amp, ws, teacher_bytes)
        if rank == 0:
            print(memory_line)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=args.lr, betas=tuple(args.adam_betas), eps=args.adam_eps,
        weight_decay=args.weight_decay,
    )  # fmt: skip
    warm = args.warmup_steps  # linear warm-up from 0.1x to 1x over `warm` steps, then constant
    schedule = lambda s: 1.0 if s >= warm else 0.1 + 0.9 * s / warm
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    eos_ids = eos_token_ids(tokenizer, model)
    state = {"step": 0, "data_pos": 0, "bad_steps": 0, "skipped_steps": 0, "best": {}}
    state["skipped_long_prompts"] = 0  # plain or privileged prompts with no room to generate
    state["reinject_queue"] = []  # (step distilled, training-row index), global (--reinject-delay)
    paths = {k: os.path.join(args.output_dir, k + ".jsonl") for k in ("metrics", "samples", "eval")}
    if ckpt:
        restore_checkpoint(ckpt, optimizer, scheduler, state, args.seed)
        if rank == 0:
            rewind_outputs(args.output_dir, state["step"], paths.values())
            print(f"resumed from {ckpt} at step {state['step']}")
    else:
        seed_everything(args.seed + rank)
    gen = dict(
        temperature=args.temperature, max_new_tokens=args.max_new_tokens,
        batch_size=args.generation_batch_size, max_seq_len=args.max_seq_len, eos_ids=eos_ids,
    )  # fmt: skip
    if rank == 0:
        print(
            f"HDPO | model {args.model} | {len(train_rows)} train rows "
            f"({len({r['problem'] for r in train_rows})} distinct problems) / "
            f"{len(val_rows or [])} val problems | world {ws} | "
            f"λ={args.distill_weight} teacher={args.teacher} | "
            f"{args.prompts_per_step}x{args.num_generations} rollouts/step | device {device}"
        )
    n_tokens = lambda text: len(tokenizer(text, add_special_tokens=False).input_ids)
    if rank == 0:
        save_args(args)
    return SimpleNamespace(
        args=args, rank=rank, world_size=ws, device=device, amp=amp, model=model,
        tokenizer=tokenizer, teacher=teacher, optimizer=optimizer, scheduler=scheduler,
        reward_fn=reward_fn, train_rows=train_rows, val_rows=val_rows, state=state, paths=paths,
        gen=gen, n_tokens=n_tokens, t_start=time.time(), step_long_prompts=0,
        trackers=Trackers(args, rank, state["step"]),
    )  # fmt: skip


def step_statistics(run, batch, rewards, cliffs, rollouts, priv_ok, pairs, losses):
    """The step's statistics for metrics.jsonl, summed over ranks."""
    G, (loss_grpo, loss_jsd, n_grpo, n_jsd) = run.args.num_generations, losses
    solved = (rewards.sum(1) == G).sum()
    truncated = sum(not o["finished"] for o in rollouts)
    local = [len(batch), cliffs.sum(), rewards.sum(), rewards.numel(), solved, len(priv_ok)]
    local += [sum(priv_ok), len(pairs), truncated, run.step_long_prompts]
    n, n_cliffs, r_sum, n_roll, n_solved, n_priv, n_ok, n_pairs, n_trunc, n_long = all_sum(
        local, run.device
    )
    # entropy: each rollout's sum of per-token entropies (nats; the engine's decode loop) over the
    # step's completion tokens, the mean per-token entropy; None if a rollout on a rank has none
    h, tokens = [o.get("entropy") for o in rollouts], [len(o["completion_ids"]) for o in rollouts]
    h_sum, h_missing, h_tokens = all_sum(
        [sum(x or 0.0 for x in h), h.count(None), sum(tokens)], run.device
    )
    run.state["skipped_long_prompts"] += int(n_long)  # global, so every rank holds the same count
    return {
        "step": run.state["step"],
        "reward_mean": r_sum / max(n_roll, 1),
        "cliff_fraction": n_cliffs / max(n, 1),
        "num_cliffs": int(n_cliffs),
        "num_prompts": int(n),
        "solved_fraction": n_solved / max(n, 1),
        "privileged_rollouts": int(n_priv),
        "privileged_pass_rate": n_ok / n_priv if n_priv else None,
        "distill_sequences": int(n_pairs),
        "distill_tokens": n_jsd,
        "grpo_tokens": n_grpo,
        "completion_len_mean": n_grpo / max(n_roll, 1),
        "truncated_fraction": n_trunc / max(n_roll, 1),
        "entropy": h_sum / h_tokens if h_tokens and not h_missing else None,
        "loss_grpo": loss_grpo,
        "loss_jsd": loss_jsd,
        "loss": loss_grpo + run.args.distill_weight * loss_jsd,
        "skipped_long_prompts": run.state["skipped_long_prompts"],
        "world_size": run.world_size,
        **reinject_statistics(run, rewards, cliffs),  # only with --reinject-delay
    }


def reinject_statistics(run, rewards, cliffs):
    """With --reinject-delay: the step's re-injected prompts, how many of them were solved (at
    least one correct rollout) and how many were cliffs again (summed over ranks); the prompts
    queued this step and the queue's length after it (global already)."""
    if not run.args.reinject_delay:
        return {}
    again = torch.tensor(run.step_reinjected, dtype=torch.bool)  # [P] re-injected prompts
    local = [again.sum(), (again & (rewards.sum(1) > 0)).sum(), (again & cliffs).sum()]
    n, solved, cliff_again = all_sum(local, run.device)
    return {
        "reinjected": int(n),
        "reinjected_solved": int(solved),
        "reinjected_cliffs": int(cliff_again),
        "reinject_queued": run.step_queued,
        "reinject_queue": len(run.state["reinject_queue"]),
    }


def validate(model, tokenizer, val_rows, args, reward_fn, amp):
    """Greedy accuracy and pass@k on the validation problems, sharded over ranks and gathered."""
    rank, ws = world()
    shard = val_rows[rank::ws]
    with amp():
        res = evaluate(
            model, tokenizer, [r["problem"] for r in shard], [r["answer"] for r in shard],
            n=args.eval_n, ks=args.eval_k, temperature=args.temperature,
            max_new_tokens=args.max_new_tokens, batch_size=args.generation_batch_size,
            max_seq_len=args.max_seq_len, progress=rank == 0, reward_fn=reward_fn,
        )  # fmt: skip
    per_problem = res["per_problem"]
    if ws > 1:
        gathered = [None] * ws
        dist.all_gather_object(gathered, per_problem)
        per_problem = [p for g in gathered for p in g]
    return summarize(per_problem, args.eval_k, args.eval_n)


def validate_if_due(run):
    """Every --eval-every steps and at the last step: validation, eval.jsonl with the best so
    far (the paper's table reports the best over the run). -> the val_* fields of the step."""
    args, step, best = run.args, run.state["step"], run.state["best"]
    if not (args.eval_every and run.val_rows):
        return {}
    if step % args.eval_every and step != args.max_steps:
        return {}
    res = validate(run.model, run.tokenizer, run.val_rows, args, run.reward_fn, run.amp)
    scores = {k: v for k, v in res.items() if k.startswith(("greedy", "pass@"))}
    for k, v in scores.items():
        if v is not None:
            best[k] = max(best.get(k, v), v)
    log_eval(run, {"step": step, **res, "best": dict(best)})  # eval.jsonl and the trackers
    return {"val_" + k: v for k, v in scores.items()}
