"""The run's logs: metrics.jsonl (one row per step), samples.jsonl (a few completions per step),
eval.jsonl (each validation), args.json (the flags), the trackers, and one console line per step.
Rank 0 writes them all."""

import json
import math
import os


def append_jsonl(path, row):
    clean = {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()
    }  # strict JSON
    with open(path, "a") as f:
        f.write(json.dumps(clean) + "\n")


def truncate_jsonl(path, max_step):
    """Drop rows written after the checkpoint we resume from, so metrics never repeat a step."""
    if os.path.exists(path):
        with open(path) as f:
            rows = [ln for ln in f if ln.strip() and json.loads(ln).get("step", 0) <= max_step]
        with open(path, "w") as f:
            f.writelines(rows)


def save_args(args):
    """<output-dir>/args.json: the run's flags (harness/report.py reads λ, the teacher and the
    setting)."""
    with open(os.path.join(args.output_dir, "args.json"), "w") as f:
        json.dump(vars(args), f, indent=1, default=str)


def step_samples(run, step_number, step):
    """The first --samples-per-step plain and privileged completions of the step (hdpo.Step), as
    samples.jsonl rows."""
    G, n = run.args.num_generations, run.args.samples_per_step
    rows, rewards = step.batch.rows, step.rewards.view(-1)
    sample = lambda kind, r, text, reward: {
        "step": step_number, "kind": kind, "problem": r["problem"], "answer": r["answer"],
        "completion": text, "reward": reward,
    }  # fmt: skip
    plain = [
        sample("plain", rows[i // G], o["text"], float(rewards[i]))
        for i, o in enumerate(step.rollouts[:n])
    ]
    privileged = zip(step.privileged.rollouts, step.privileged.owners, step.correct)
    return plain + [
        sample("privileged", rows[i], o["text"], float(ok)) for o, i, ok in list(privileged)[:n]
    ]


def log_step(run, row, step):
    """Rank 0: metrics.jsonl, a few samples in samples.jsonl, the trackers, one console line."""
    if run.rank != 0:
        return
    append_jsonl(run.paths["metrics"], row)
    samples = step_samples(run, row["step"], step)
    for s in samples:
        append_jsonl(run.paths["samples"], s)
    run.trackers.log_step(row, samples)
    print(console_line(row, run.args.max_steps), flush=True)


def console_line(row, max_steps):
    """The step's metrics row in one line."""
    ppr, entropy = row["privileged_pass_rate"], row.get("entropy")
    vals = [f"{k[4:]} {v:.3f}" for k, v in row.items() if k.startswith("val_") and v is not None]
    return (
        f"step {row['step']}/{max_steps} | reward {row['reward_mean']:.3f} | "
        + ("" if entropy is None else f"entropy {entropy:.3f} | ")
        + f"cliffs {row['num_cliffs']}/{row['num_prompts']} | "
        f"priv pass {'-' if ppr is None else f'{ppr:.2f}'} | "
        f"distill {row['distill_sequences']} seq {row['distill_tokens']} tok | "
        f"L_grpo {row['loss_grpo']:+.4f} L_jsd {row['loss_jsd']:.4f} | "
        f"gnorm {row['grad_norm']:.3f} | lr {row['lr']:.2e} | "
        f"{row['step_time_s']:.1f}s (gen {row['generation_time_s']:.1f}s)"
        + (" | SKIPPED (non-finite)" if row["skipped"] else "")
        + (" | val " + " ".join(vals) if vals else "")
    )


def log_eval(run, row):
    """Rank 0: an eval.jsonl row, also sent to the trackers."""
    if run.rank == 0:
        append_jsonl(run.paths["eval"], row)
        run.trackers.log_eval(row)
