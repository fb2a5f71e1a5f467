"""A training run around hdpo.train's loop, none of it Algorithm 1:
- setup_run: data, policy, teacher, optimiser and warm-up, the memory plan on GPU, resume, the
  generation settings, in one namespace;
- record_step: after the update, the step's statistics (summed over ranks), validation when due,
  the logs and a checkpoint when due;
- finish_run: the final model and the run's summary;
- run_command: the command line's body (torchrun, one-line errors, Ctrl-C).
"""

import contextlib
import os
import sys
import time
from types import SimpleNamespace

import torch
import torch.distributed as dist

import reinject
from data import DataError, load_problems, split_train_val
from engine import check_generation_support, eos_token_ids, plan_generation
from eval import evaluate, summarize
from forward import UnsupportedModelError, check_training_support
from harness.checkpoint import (
    CheckpointError,
    find_checkpoint,
    restore_checkpoint,
    rewind_outputs,
    save_checkpoint,
    seed_everything,
)
from harness.distributed import all_sum, compute_device, init_distributed, world
from harness.loading import ModelLoadError, load_model, quiet_libraries
from harness.logs import log_eval, log_step, save_args
from harness.memory import keep_freed_memory, plan_memory, set_checkpointing
from harness.trackers import TrackerError, Trackers, require_trackers


class TrainingError(RuntimeError):
    """A run that cannot go on (e.g. too many non-finite steps in a row)."""


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
        train_rows, val_rows = load_split(args, val_rows)
    if not train_rows:
        raise DataError("no training problems after the train/validation split")

    model_dir = os.path.join(ckpt, "model") if ckpt else args.model
    model, tokenizer = load_model(model_dir, device=device, dtype=torch.float32)
    if args.gradient_checkpointing:
        set_checkpointing(model, True)
    # what the losses cannot compute exactly on this architecture is refused here, in one line
    note = check_training_support(model, args.max_seq_len)
    check_generation_support(model, args.max_seq_len)  # and what the engine cannot generate
    if note and rank == 0:
        print(note)
    if ws > 1:  # every rank starts from rank 0's weights
        for t in model.state_dict().values():
            dist.broadcast(t, 0)
    teacher = build_teacher(args, model, ckpt, device)
    if device.type == "cuda":  # size micro-batches (and checkpointing) to the card
        teacher_bytes = 0 if teacher is model else sum(p.nbytes for p in teacher.parameters())
        memory_line = plan_memory(args, model, amp, ws, teacher_bytes)
        # generation's rows beside the weights and AdamW's moments (8 bytes a parameter, made at
        # the first step), --max-seq-len tokens each (engine.plan_generation, docs/engine.md)
        budget = 0.9 * torch.cuda.mem_get_info(device)[1] - torch.cuda.memory_allocated(device)
        budget -= 8 * sum(p.numel() for p in model.parameters())
        args.generation_batch_size, generation_line = plan_generation(
            model, args.generation_batch_size, args.max_seq_len, budget
        )
        if rank == 0:
            print(memory_line)
            print(generation_line)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=args.lr, betas=tuple(args.adam_betas), eps=args.adam_eps,
        weight_decay=args.weight_decay,
    )  # fmt: skip
    warm = args.warmup_steps  # linear warm-up from 0.1x to 1x over `warm` steps, then constant
    schedule = lambda s: 1.0 if s >= warm else 0.1 + 0.9 * s / warm
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    state = {"step": 0, "data_pos": 0, "bad_steps": 0, "skipped_steps": 0, "best": {}}
    state["skipped_long_prompts"] = 0  # plain or privileged prompts with no room to generate
    state["reinject_queue"] = []  # (step distilled, training-row index), global (reinject.py)
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
        batch_size=args.generation_batch_size, max_seq_len=args.max_seq_len,
        eos_ids=eos_token_ids(tokenizer, model),
    )  # fmt: skip
    if rank == 0:
        print(
            f"HDPO | model {args.model} | {len(train_rows)} train rows "
            f"({len({r['problem'] for r in train_rows})} distinct problems) / "
            f"{len(val_rows or [])} val problems | world {ws} | "
            f"λ={args.distill_weight} teacher={args.teacher} | "
            f"{args.prompts_per_step}x{args.num_generations} rollouts/step | device {device}"
        )
        save_args(args)
    n_tokens = lambda text: len(tokenizer(text, add_special_tokens=False).input_ids)
    return SimpleNamespace(
        args=args, rank=rank, world_size=ws, device=device, amp=amp, model=model,
        tokenizer=tokenizer, teacher=teacher, optimizer=optimizer, scheduler=scheduler,
        reward_fn=reward_fn, train_rows=train_rows, val_rows=val_rows, state=state, paths=paths,
        gen=gen, n_tokens=n_tokens, t_start=time.time(),
        trackers=Trackers(args, rank, state["step"]),
    )  # fmt: skip


def load_split(args, val_rows):
    """--dataset loaded and split 95/5 by problem. -> (training rows, validation rows: the held-out
    problems unless val_rows is given)."""
    keys = dict(problem_key=args.problem_key, answer_key=args.answer_key)
    keys.update(solution_key=args.solution_key, with_solutions=args.privileged == "solution")
    rows = load_problems(args.dataset, split=args.split, config=args.dataset_config, **keys)
    train_rows, held_out = split_train_val(rows, args.val_fraction, args.eval_problems, args.seed)
    return train_rows, held_out if val_rows is None else val_rows


def record_step(run, step, stop):
    """After Algorithm 1's line 7: the step's statistics, validation when due, metrics.jsonl and
    samples.jsonl, the console line, the non-finite guard and a checkpoint when due. step:
    hdpo.Step. -> True when the run should stop now (Ctrl-C / SIGTERM)."""
    t0, t_gen = step.times
    row = step_statistics(run, step)
    row.update(step.update, generation_time_s=round(t_gen, 3))
    row["train_time_s"] = round(time.time() - t0 - t_gen, 3)
    row.update(validate_if_due(run))
    row["step_time_s"] = round(time.time() - t0, 3)  # generation to update (and validation)
    log_step(run, row, step)
    raise_if_failing(run)
    return checkpoint_if_due(run, stop)


def step_statistics(run, step):
    """The step's statistics for metrics.jsonl, summed over ranks."""
    G, (loss_grpo, loss_jsd, n_grpo, n_jsd) = run.args.num_generations, step.losses
    rewards, rollouts, correct = step.rewards, step.rollouts, step.correct
    solved = (rewards.sum(1) == G).sum()
    truncated = sum(not o["finished"] for o in rollouts)
    local = [len(step.batch.rows), step.cliffs.sum(), rewards.sum(), rewards.numel(), solved]
    local += [len(correct), sum(correct), len(step.pairs), truncated]
    local += [step.batch.skipped + step.privileged.skipped]
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
    row = {
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
    }
    if run.args.reinject_delay:
        row.update(reinject.statistics(step, run.state, run.device))
    return row


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


def raise_if_failing(run):
    """After --max-bad-steps non-finite steps in a row: stop with a one-line error."""
    bad, step = run.state["bad_steps"], run.state["step"]
    if bad >= run.args.max_bad_steps:
        raise TrainingError(
            f"{bad} non-finite steps in a row (loss or gradient is NaN/inf); stopping at step "
            f"{step}. Lower --lr or check the data; --debug for details"
        )


def checkpoint_if_due(run, stop):
    """Every --save-every steps, at the last step, and after Ctrl-C / SIGTERM (the ranks agree).
    -> True when the run should stop now."""
    args, step = run.args, run.state["step"]
    stopping = all_sum([stop.signal is not None], run.device)[0] > 0
    if stopping or (args.save_every and step % args.save_every == 0) or step == args.max_steps:
        trainer_state = {k: v for k, v in run.state.items() if k != "step"}
        path = save_checkpoint(
            args.output_dir, step, run.model, run.tokenizer, run.teacher, run.optimizer,
            run.scheduler, trainer_state, args.keep_checkpoints,
        )  # fmt: skip
        if run.rank == 0:
            print(f"checkpoint: {path}", flush=True)
    return stopping


def finish_run(run, stop):
    """The final model (unless interrupted), and every rank returns with the run's files written."""
    out = run.args.output_dir
    run.trackers.close()
    if run.rank == 0 and not stop.signal:
        run.model.save_pretrained(os.path.join(out, "final"))
        run.tokenizer.save_pretrained(os.path.join(out, "final"))
    if run.world_size > 1:
        dist.barrier()
    return {
        "steps": run.state["step"],
        "time_s": time.time() - run.t_start,
        "output_dir": out,
        "best_eval": run.state["best"],
        "skipped_steps": run.state["skipped_steps"],
        "interrupted": stop.signal is not None,
    }


def run_command(prog, work, debug=False):
    """A command line's body: quiet libraries, torchrun's process group (when WORLD_SIZE > 1),
    then work(). Bad input is one line on stderr and exit 1 (--debug: the traceback); Ctrl-C /
    SIGTERM exit 130, also when work() returns a summary marked interrupted."""
    quiet_libraries()  # no datasets/transformers progress bars: errors stay one line on stderr
    init_distributed()  # under torchrun: one process per GPU, pinned to cuda:LOCAL_RANK
    try:
        if (work() or {}).get("interrupted"):
            sys.exit(130)  # stopped by Ctrl-C / SIGTERM after saving a checkpoint: not finished
    except (DataError, ModelLoadError, TrainingError, TrackerError, FileNotFoundError,
            UnsupportedModelError, CheckpointError) as e:  # fmt: skip
        if debug:
            raise
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
