"""Runs beside the paper's Table 1, and their curves.

    python -m harness.report runs/grpo runs/frozen-0.01 runs/frozen-0.1 \
        runs/drifting-0.01 runs/drifting-0.1
    python -m harness.report runs/demo            # the demo's arm folders (runs/demo/grpo, /hdpo)

For each run folder (what `hdpo.py --output-dir` writes: metrics.jsonl, eval.jsonl, args.json) it
prints the best greedy / pass@4 / pass@8 of the run's validations and the step where each was
first reached, under the paper's row with the same λ and teacher (arXiv 2603.23871,
Table 1); it marks runs shorter than the paper's 2,000 steps and runs outside the paper's
setting (model, rollouts per step, validation set). Then it draws report.png (matplotlib,
optional): reward, cliff fraction, privileged pass rate, entropy and validation curves of every run.
Works on runs still in progress (a half-written last line is skipped) and on runs without
validation (no eval.jsonl). A folder with run folders inside (runs/demo) stands for them.
"""

import argparse
import json
import math
import os
import sys

# arXiv 2603.23871, Table 1: best over 2,000 steps on 2,048 validation problems, 8×H200.
# (method, λ, teacher, greedy = the paper's pass@1, pass@4, pass@8); the teacher does not apply at
# λ = 0.
PAPER_ROWS = (
    ("GRPO baseline", 0.0, None, 0.6519, 0.7749, 0.8228),
    ("HDPO frozen, λ=0.01", 0.01, "frozen", 0.6519, 0.7812, 0.8218),
    ("HDPO frozen, λ=0.1", 0.1, "frozen", 0.6304, 0.7812, 0.8398),
    ("HDPO drifting, λ=0.01", 0.01, "drifting", 0.6514, 0.7861, 0.8271),
    ("HDPO drifting, λ=0.1", 0.1, "drifting", 0.6294, 0.7856, 0.8364),
)
PAPER_STEPS, PAPER_VAL_PROBLEMS = 2000, 2048
PAPER_MODEL = "Qwen2.5-Math-1.5B-Instruct"
PAPER_ROLLOUTS = (32, 16)  # prompts per step, rollouts per prompt
METRICS = ("greedy", "pass@4", "pass@8")
STYLE = {"greedy": "-", "pass@4": "--", "pass@8": "-"}  # report.png's validation panels
CURVES = (  # report.png panels: (metrics.jsonl key, title)
    ("reward_mean", "reward (mean over the step's rollouts)"),
    ("cliff_fraction", "cliff fraction (prompts with all G rollouts wrong)"),
    ("privileged_pass_rate", "privileged pass rate (R = 1 among x ⊕ y* rollouts)"),
    ("entropy", "entropy (nats per completion token)"),
)


class ReportError(RuntimeError):
    """A folder that is not a run: the message says which and why."""


def read_jsonl(path):
    """The rows (with a step) of a JSONL file; [] when it does not exist. A line that does not
    parse (the last one of a run being written) is skipped."""
    rows = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(row, dict) and isinstance(row.get("step"), int):
                    rows.append(row)
    return rows


def is_run(path):
    return any(os.path.exists(os.path.join(path, f)) for f in ("metrics.jsonl", "eval.jsonl"))


def run_folders(paths):
    """The run folders named on the command line; a folder that holds run folders (runs/demo)
    stands for them, in name order."""
    out = []
    for p in paths:
        if not os.path.isdir(p):
            raise ReportError(f"{p}: no such folder")
        if is_run(p):
            out.append(p)
            continue
        inner = sorted(os.path.join(p, d) for d in os.listdir(p) if is_run(os.path.join(p, d)))
        if not inner:
            raise ReportError(f"{p}: not a run folder (no metrics.jsonl or eval.jsonl in it)")
        out += inner
    return list(dict.fromkeys(os.path.normpath(p) for p in out))  # each run once


def best_scores(evals):
    """{metric: (best value, first step where it was reached)} over eval.jsonl's rows; metrics
    never validated are absent."""
    best = {}
    for row in evals:
        for k in METRICS:
            v = row.get(k)
            if v is not None and (k not in best or v > best[k][0]):
                best[k] = (v, row["step"])
    return best


def paper_row(args):
    """The index in PAPER_ROWS of the run's configuration (λ, teacher), or None."""
    if not args or "distill_weight" not in args:
        return None
    for i, (_, lam, teacher, *_) in enumerate(PAPER_ROWS):
        if math.isclose(args["distill_weight"], lam) and (lam == 0 or args["teacher"] == teacher):
            return i
    return None


def setting_differences(args, evals):
    """How the run's setting differs from the paper's (model, rollouts, validation set)."""
    out = []
    model = str(args.get("model", "?"))
    if os.path.basename(os.path.normpath(model)).lower() != PAPER_MODEL.lower():
        out.append(f"model {model}")
    rollouts = (args.get("prompts_per_step"), args.get("num_generations"))
    if all(rollouts) and rollouts != PAPER_ROLLOUTS:
        out.append(f"{rollouts[0]}x{rollouts[1]} rollouts/step")
    n_val = evals[-1].get("n_problems") if evals else None
    if n_val is not None and n_val != PAPER_VAL_PROBLEMS:
        out.append(f"{n_val} validation problems")
    return out


def load_run(path):
    """What the report needs from one run folder."""
    metrics = read_jsonl(os.path.join(path, "metrics.jsonl"))
    evals = read_jsonl(os.path.join(path, "eval.jsonl"))
    args_path = os.path.join(path, "args.json")
    args = None
    if os.path.exists(args_path):
        with open(args_path) as f:
            try:
                args = json.load(f)
            except ValueError as e:
                raise ReportError(f"{args_path}: not JSON ({e})") from e
    steps = max([r["step"] for r in metrics + evals], default=0)
    return {
        "name": os.path.normpath(path),
        "path": path,
        "args": args,
        "metrics": metrics,
        "evals": evals,
        "steps": steps,
        "best": best_scores(evals),
        "row": paper_row(args),
        "differs": setting_differences(args, evals) if args else [],
    }


def config_label(run):
    a = run["args"]
    if a is None:
        return "config unknown (no args.json)"
    lam = a["distill_weight"]
    return f"λ={lam:g}" + (f" {a['teacher']}" if lam > 0 else "")


def format_table(runs):
    """The side-by-side table as text."""
    label = lambda r: "  " + r["name"] + ("" if r["row"] is not None else f" ({config_label(r)})")
    name_w = max([len(label(r)) for r in runs] + [len(m) for m, *_ in PAPER_ROWS]) + 2
    col = 16
    lines = [
        "Table 1 of arXiv 2603.23871 (best over 2,000 steps, 2,048 validation problems, 8×H200)",
        "beside each run's best validation score and the first step it was reached (greedy is",
        "the paper's pass@1).",
        "",
        f"{'':{name_w}}" + "".join(f"{k:<{col}}" for k in METRICS) + f"{'steps':>5}",
    ]

    def run_line(r):
        cells = [f"{r['best'][k][0]:.4f} @{r['best'][k][1]}" if k in r["best"] else "–"
                 for k in METRICS]  # fmt: skip
        marks = ("*" if r["steps"] < PAPER_STEPS else "") + ("≠" if r["differs"] else "")
        text = f"{label(r):{name_w}}" + "".join(f"{c:<{col}}" for c in cells)
        text += f"{r['steps']:>5} {marks}".rstrip()
        return text + ("" if r["evals"] else "  (no validation)")

    for i, (method, *_, greedy, p4, p8) in enumerate(PAPER_ROWS):
        lines.append(
            f"{method:{name_w}}"
            + "".join(f"{v:<{col}.4f}" for v in (greedy, p4, p8))
            + f"{PAPER_STEPS:>5}  (paper)"
        )
        lines += [run_line(r) for r in runs if r["row"] == i] or ["  (no run)"]
    others = [r for r in runs if r["row"] is None]
    if others:
        lines += ["", "Runs with no row in the paper's table:"]
        lines += [run_line(r) for r in others]
    notes = []
    if any(r["steps"] < PAPER_STEPS for r in runs):
        notes.append("* shorter than the paper's 2,000 steps (a best over fewer validations)")
    notes += [f"≠ {r['name']}: not the paper's setting: {', '.join(r['differs'])}"
              for r in runs if r["differs"]]  # fmt: skip
    for r in runs:
        if not r["evals"]:
            note = f"{r['name']}: no eval.jsonl (validation off: run hdpo.py with --eval-every N)"
            summary = os.path.join(
                os.path.dirname(os.path.normpath(r["path"])), "demo_summary.json"
            )
            if os.path.exists(summary):
                note += f"; the demo's held-out results are in {summary}"
            notes.append(note)
    return "\n".join(lines + ([""] + notes if notes else []))


def pyplot(figure):
    """matplotlib.pyplot on the Agg backend, or None (and a line saying `figure` is not drawn)
    where matplotlib is not installed: it is optional."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib not installed: no {figure} (pip install matplotlib)")
        return None
    return plt


def plot(runs, path):
    """report.png: the training curves and validation scores of every run. -> path, or None
    without matplotlib."""
    plt = pyplot("report.png")
    if plt is None:
        return None
    fig, axes = plt.subplots(2, 3, figsize=(16, 8.5))
    axes = axes.flatten()
    for j, r in enumerate(runs):
        color, label = f"C{j % 10}", r["name"]
        for ax, (key, _) in zip(axes, CURVES):
            pts = [(m["step"], m[key]) for m in r["metrics"] if m.get(key) is not None]
            if not pts:
                continue
            xs, ys = zip(*pts)
            w = max(1, len(ys) // 25)  # running mean over ~4% of the run
            smooth = [sum(ys[max(0, i - w + 1) : i + 1]) / len(ys[max(0, i - w + 1) : i + 1])
                      for i in range(len(ys))]  # fmt: skip
            ax.plot(xs, ys, color=color, alpha=0.25 if w > 1 else 1.0, lw=1)
            if w > 1:
                ax.plot(xs, smooth, color=color, lw=2)
            ax.plot([], [], color=color, lw=2, label=label)
        for ax, keys in ((axes[4], ("greedy",)), (axes[5], ("pass@4", "pass@8"))):
            for k in keys:
                pts = [(e["step"], e[k]) for e in r["evals"] if e.get(k) is not None]
                if pts:
                    ax.plot(*zip(*pts), STYLE[k], color=color, marker=".", label=f"{label} {k}")
    titles = [t for _, t in CURVES] + ["validation greedy (paper's pass@1)", "validation pass@k"]
    for ax, title in zip(axes, titles):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="hdpo.py output folders")
    p.add_argument("--output", "-o", default="report.png", help="the figure (needs matplotlib)")
    args = p.parse_args(argv)
    try:
        runs = [load_run(d) for d in run_folders(args.runs)]
    except (ReportError, OSError, ValueError) as e:
        print(f"harness.report: error: {e}", file=sys.stderr)
        sys.exit(1)
    print(format_table(runs))
    png = plot(runs, args.output)
    if png:
        print(f"\nwrote {png}")
    return runs


if __name__ == "__main__":
    main()
