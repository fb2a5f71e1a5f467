"""The re-injection demo over seeds (issue 15): `python hdpo.py --demo --arms all --seed S
--output-dir runs/reinject-seedS` for each seed, then

    python benchmarks/reinject/summarize.py runs/reinject-seed42 runs/reinject-seed1 ...

copies each run's demo_summary.json here as <run name>.json and writes <run name>-phases.json
(each arm's metrics.jsonl averaged over 16-step phases: the few figures the README quotes from
the per-step logs), then prints the table. Without arguments it prints the table from the
files already here."""

import glob
import json
import os
import shutil
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ARMS = ("grpo", "hdpo", "hdpo_reinject")
PHASE = 16
KEYS = ("reward_mean", "num_cliffs", "privileged_pass_rate", "distill_sequences",
        "reinjected", "reinjected_solved", "reinjected_cliffs", "reinject_queue")  # fmt: skip


def phases(run_dir):
    """Per arm: per 16-step phase, the mean of KEYS (None counts as 0), and totals over the run
    (privileged rollouts, distilled sequences, median step time)."""
    out = {}
    for arm in ARMS:
        with open(os.path.join(run_dir, arm, "metrics.jsonl")) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        out[arm] = {
            "phases": [
                {
                    "steps": f"{i + 1}-{i + len(rows[i : i + PHASE])}",
                    **{
                        k: round(statistics.mean(r.get(k) or 0 for r in rows[i : i + PHASE]), 3)
                        for k in KEYS
                    },
                }  # fmt: skip
                for i in range(0, len(rows), PHASE)
            ],
            "privileged_rollouts": sum(r["privileged_rollouts"] for r in rows),
            "distill_sequences": sum(r["distill_sequences"] for r in rows),
            "step_time_s_median": statistics.median(r["step_time_s"] for r in rows),
        }
    return out


def table(names):
    """Markdown: one row per seed and arm, then the mean over seeds."""
    rows, head = [], "| run | arm | cliffs start | cliffs end | greedy | pass@1 | pass@4 | pass@8 |"
    fields = lambda s: (
        [s["cliff_fraction_start"], s["cliff_fraction_end"]]
        + [s["heldout"][k] for k in ("greedy", "pass@1", "pass@4", "pass@8")]
    )
    per_arm = {arm: [] for arm in ARMS}
    for name in names:
        with open(os.path.join(HERE, name + ".json")) as f:
            summary = json.load(f)
        for arm in ARMS:
            per_arm[arm].append(fields(summary[arm]))
            t = f" ({summary[arm]['time_s']:.0f} s)"
            rows.append(
                f"| {name} | {arm}{t} | "
                + " | ".join(f"{v:.3f}" for v in fields(summary[arm]))
                + " |"
            )
    for arm in ARMS:
        mean = [statistics.mean(c) for c in zip(*per_arm[arm])]
        rows.append(f"| mean | {arm} | " + " | ".join(f"{v:.3f}" for v in mean) + " |")
    return "\n".join([head, "|" + "---|" * 8] + rows)


def main(run_dirs):
    names = []
    for d in run_dirs:
        name = os.path.basename(os.path.normpath(d))
        shutil.copy(os.path.join(d, "demo_summary.json"), os.path.join(HERE, name + ".json"))
        with open(os.path.join(HERE, name + "-phases.json"), "w") as f:
            json.dump(phases(d), f, indent=1)
        names.append(name)
    if not names:
        names = sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(HERE, "*.json"))
                       if not p.endswith("-phases.json"))  # fmt: skip
    print(table(names))


if __name__ == "__main__":
    main(sys.argv[1:])
