"""Benchmark: one training step of ours against TRL's GRPOTrainer on the same work, on this machine.

    python benchmarks/bench_step.py --model DIR --trl-python VENV/bin/python --rounds 3

DIR: a real model (SmolLM2-135M-Instruct here). The first 4 GSM8K test problems (tests/data) x 8
rollouts x exactly 64 new tokens (TRL: min_new_tokens = max_completion_length = 64; ours: EOS
off, so every rollout runs to its cap), temperature 1, fp32 on CPU, β = 0 (TRL's loss_type "dapo"
is our token-level loss), one optimiser step per 32 sequences (TRL's per_device_train_batch_size
32, no accumulation), the same 0/1 reward for both (one bit of SHA-256 of the completion: about
half the rollouts are rewarded, so both do the whole backward). Arms, each in its own process,
so the peak resident memory (VmHWM) is the arm's own:
  trl          TRL GRPOTrainer (from --trl-python: TRL is never a dependency of this project)
  hdpo         ours, λ = 0 (hdpo.train; its metrics.jsonl step_time_s)
  hdpo_cliffs  ours, λ = 0.1, every prompt a cliff (plain rollouts reward 0, privileged ones 1):
               HDPO's extra work, privileged generation and the JSD pass
The first step of each is a warm-up, not counted. --rounds N runs the arms N times, interleaved,
so the machine's drift lands on all of them; the table gives medians over rounds and each round's
ours/TRL ratio (--output, benchmarks/results/bench_step.json). `--new-tokens 4096 --eos --arms
hdpo` measures our step at the paper's length cap with rollouts that stop at EOS, as a run does.
"""

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TAG = "BENCH_RESULT "
ARMS = ("trl", "hdpo", "hdpo_cliffs")
MEDIANS = {"step_s": "median_s", "step_cpu_s": "cpu_median_s",  # per-step times -> medians
           "generation_s": "generation_median_s", "train_s": "train_median_s"}  # fmt: skip


def bench_reward(text, answer=None):
    """One bit of SHA-256 of the completion: deterministic, the same for both systems."""
    return float(hashlib.sha256(text.encode("utf-8")).digest()[0] & 1)


def peak_mb():
    """This process's peak resident memory (VmHWM, Linux) in MB."""
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:")) / 1024


def cpu_s():
    t = os.times()
    return t.user + t.system


def rows(cfg):
    from data import load_problems

    path = os.path.join(ROOT, "tests", "data", "gsm8k_test.jsonl")
    return load_problems(path, limit=cfg["prompts"])


# ----------------------------------------------------------------------------------------------
# The arms (children). Each returns its per-step wall and CPU times (warm-up first).


def child_trl(cfg, out):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from data import chat_prompt

    tok = AutoTokenizer.from_pretrained(cfg["model"])
    model = AutoModelForCausalLM.from_pretrained(cfg["model"], dtype="float32")
    prompts = [chat_prompt(tok, r["problem"]) for r in rows(cfg)]  # the same strings as ours
    marks = []

    class Timer(TrainerCallback):
        def on_train_begin(self, *a, **kw):
            marks.append((time.perf_counter(), cpu_s()))

        def on_step_end(self, *a, **kw):
            marks.append((time.perf_counter(), cpu_s()))

    n = cfg["prompts"] * cfg["generations"]
    args = GRPOConfig(
        output_dir=out, per_device_train_batch_size=n, num_generations=cfg["generations"],
        max_completion_length=cfg["new_tokens"],
        generation_kwargs={"min_new_tokens": cfg["new_tokens"]}, loss_type="dapo", beta=0.0,
        temperature=1.0, top_k=0, top_p=1.0, learning_rate=1e-6, max_steps=1 + cfg["steps"],
        logging_steps=1, report_to="none", save_strategy="no", use_cpu=True, bf16=False,
        seed=42, disable_tqdm=True,
    )  # fmt: skip
    reward = lambda prompts, completions, **kw: [bench_reward(c) for c in completions]
    GRPOTrainer(
        model=model, reward_funcs=[reward], args=args, processing_class=tok, callbacks=[Timer()],
        train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]),
    ).train()  # fmt: skip
    walls = [b[0] - a[0] for a, b in zip(marks, marks[1:])]
    cpus = [b[1] - a[1] for a, b in zip(marks, marks[1:])]
    return {"step_s": walls, "step_cpu_s": cpus, "trl_version": __import__("trl").__version__}


def child_hdpo(cfg, out, cliffs):

    import harness.logs
    import hdpo

    V = json.load(open(os.path.join(cfg["model"], "config.json")))["vocab_size"]
    real = hdpo.generate
    privileged = set()  # texts of privileged rollouts (cliffs arm: the reward 1)

    lengths, cut = [], []  # each step's plain rollout lengths, and how many a length cap cut

    def generate(model, tokenizer, prompts, **kw):  # EOS off unless --eos: rollouts run to the cap
        outs = real(model, tokenizer, prompts, **(kw if cfg.get("eos") else dict(kw, eos_ids=[V])))
        if any("(Hint: the correct final answer is" in p for p in prompts):
            privileged.update(o["text"] for o in outs)
        else:
            lengths.append([len(o["completion_ids"]) for o in outs])
            cut.append(sum(not o["finished"] for o in outs))
        return outs

    hdpo.generate = generate
    cpus, last = [], [cpu_s()]
    write = harness.logs.append_jsonl

    def append_jsonl(path, row):  # the step's CPU time, noted when its metrics row is written
        if path.endswith("metrics.jsonl"):
            cpus.append(cpu_s() - last[0])
            last[0] = cpu_s()
        write(path, row)

    harness.logs.append_jsonl = append_jsonl
    flags = ["--model", cfg["model"], "--prompts-per-step", str(cfg["prompts"]),
             "--num-generations", str(cfg["generations"]), "--max-new-tokens",
             str(cfg["new_tokens"]), "--distill-weight", str(0.1 if cliffs else 0.0),
             "--eval-every", "0", "--max-steps", str(1 + cfg["steps"]), "--output-dir", out,
             "--samples-per-step", "0", *cfg["hdpo_flags"]]  # fmt: skip
    reward = (lambda text, answer: float(text in privileged)) if cliffs else bench_reward
    hdpo.train(hdpo.parse_args(flags), train_rows=rows(cfg), val_rows=[], reward_fn=reward)
    with open(os.path.join(out, "metrics.jsonl")) as f:
        m = [json.loads(ln) for ln in f if ln.strip()]
    col = lambda k: [r[k] for r in m]
    return {"step_s": col("step_time_s"), "step_cpu_s": cpus, "rollout_lengths": lengths,
            "rollouts_cut": cut, "generation_s": col("generation_time_s"),
            "train_s": col("train_time_s"), "distill_sequences": col("distill_sequences"),
            "completion_len_mean": col("completion_len_mean")}  # fmt: skip


def child_main(name, cfg):
    sys.path.insert(0, ROOT)
    if cfg["threads"]:
        __import__("torch").set_num_threads(cfg["threads"])
    out = tempfile.mkdtemp(prefix=f"bench_{name}_")  # a checkpoint of ~2 GB: removed below
    try:
        res = child_trl(cfg, out) if name == "trl" else child_hdpo(cfg, out, name == "hdpo_cliffs")
    finally:
        shutil.rmtree(out, ignore_errors=True)
    res["peak_rss_mb"] = peak_mb()
    print(TAG + json.dumps(res), flush=True)


# ----------------------------------------------------------------------------------------------
# The parent: rounds of children, the summary, the table.


def run_child(name, cfg, python, timeout):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONWARNINGS="ignore",
               TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error")  # fmt: skip
    cmd = [python, os.path.abspath(__file__), "--child", name, "--cfg", json.dumps(cfg)]
    t = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    for line in reversed(p.stdout.splitlines()):
        if line.startswith(TAG):
            res = json.loads(line[len(TAG) :])
            for per_step, median in MEDIANS.items():  # the warm-up step left out (if not alone)
                if per_step in res:
                    res[median] = statistics.median(res[per_step][1:] or res[per_step])
            print(f"   {name}: {time.perf_counter() - t:.0f} s, median step {res['median_s']:.2f}"
                  f" s, peak RSS {res['peak_rss_mb']:.0f} MB", flush=True)  # fmt: skip
            return res
    return {"error": (p.stderr.strip().splitlines() or ["no output"])[-1], "rc": p.returncode}


def merge_rounds(results):
    """One arm over the rounds -> the round itself when there is one; else the medians over the
    rounds that ran of each round's median step (wall, CPU), the largest peak RSS, and every
    round's result under "rounds"."""
    ok = [r for r in results if "median_s" in r]
    if len(results) == 1 or not ok:
        return results[0]
    out = dict(ok[0], rounds=results)
    for k in MEDIANS.values():
        if all(k in r for r in ok):
            out[k] = statistics.median(r[k] for r in ok)
    out["peak_rss_mb"] = max(r["peak_rss_mb"] for r in ok)
    return out


def ratios_by_round(rounds, arm="hdpo", base="trl", key="median_s"):
    """arm / base for each round (None where either failed)."""
    return [
        r[arm][key] / r[base][key] if key in r.get(arm, {}) and key in r.get(base, {}) else None
        for r in rounds
    ]


def table(R):
    """The results as text: one row per arm, then ours/TRL round by round."""
    trl = R["arms"].get("trl", {})
    ratio = lambda r, k: f"{r[k] / trl[k]:.2f}" if k in r and k in trl else "-"
    lines = [f"{'arm':<14}{'wall (s)':>10}{'CPU (s)':>10}{'peak RSS (MB)':>15}"
             f"{'wall/TRL':>10}{'CPU/TRL':>9}{'RSS/TRL':>9}"]  # fmt: skip
    for name, r in R["arms"].items():
        if "median_s" not in r:
            lines.append(f"{name:<14}  error: {r.get('error', '?')[:80]}")
            continue
        lines.append(f"{name:<14}{r['median_s']:>10.2f}{r['cpu_median_s']:>10.2f}"
                     f"{r['peak_rss_mb']:>15.0f}{ratio(r, 'median_s'):>10}"
                     f"{ratio(r, 'cpu_median_s'):>9}{ratio(r, 'peak_rss_mb'):>9}")  # fmt: skip
    for name, r in R["arms"].items():
        if "generation_median_s" in r:
            lines.append(f"{name}: generation {r['generation_median_s']:.2f} s, losses and update "
                         f"{r['train_median_s']:.2f} s (medians)")  # fmt: skip
    for name, r in R["arms"].items():
        for i, n in enumerate(r.get("rollout_lengths", [])):
            cut = r["rollouts_cut"][i] if "rollouts_cut" in r else "?"  # older results: no count
            lines.append(f"{name} step {i + 1}: rollouts of {statistics.mean(n):.0f} tokens on "
                         f"average, longest {max(n)}, {cut} cut by a length cap")  # fmt: skip
    by_round = R.get("hdpo_over_trl_by_round", [])
    ok = [x for x in by_round if x is not None]
    if ok:
        shown = ", ".join("-" if x is None else f"{x:.2f}" for x in by_round)
        lines.append(f"ours/TRL wall, round by round: {shown} (median {statistics.median(ok):.2f})")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", help="a real model folder (SmolLM2-135M-Instruct); required")
    p.add_argument("--trl-python", default=sys.executable, help="a python with trl installed")
    p.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset of " + str(ARMS))
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--steps", type=int, default=3, help="after 1 warm-up step (0: that step alone)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--hdpo-flags", default="", help="extra hdpo.py flags for our arms")
    p.add_argument("--new-tokens", type=int, default=64, help="the cap on new tokens per rollout")
    p.add_argument("--eos", action="store_true", help="our arms stop rollouts at EOS (no trl arm)")
    p.add_argument("--timeout", type=int, default=3600, help="seconds per child")
    p.add_argument("--output", default=os.path.join(ROOT, "benchmarks/results/bench_step.json"))
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--cfg", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        return child_main(a.child, json.loads(a.cfg))
    arms, rounds = a.arms.split(","), []
    if not a.model:
        p.error("--model DIR is required (a real model folder)")
    if a.steps < 0 or (a.eos and "trl" in arms):
        p.error("--steps must be >= 0; --eos is for our arms only (--arms hdpo,hdpo_cliffs)")
    cfg = dict(model=os.path.abspath(a.model), prompts=4, generations=8, new_tokens=a.new_tokens,
               eos=a.eos, steps=a.steps, threads=a.threads,
               hdpo_flags=a.hdpo_flags.split())  # fmt: skip
    for k in range(a.rounds):
        print(f"-- round {k + 1}/{a.rounds}", flush=True)
        python = lambda arm: a.trl_python if arm == "trl" else sys.executable
        rounds.append({arm: run_child(arm, cfg, python(arm), a.timeout) for arm in arms})
    import torch
    import transformers

    shown = {a.model: "DIR", a.trl_python: "VENV/bin/python"}  # no machine's paths in results
    R = {
        "command": " ".join(
            ["python benchmarks/bench_step.py"] + [shown.get(x, x) for x in (argv or sys.argv[1:])]
        ),  # fmt: skip
        "setting": dict(cfg, model=os.path.basename(cfg["model"])),
        "machine": {
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },  # fmt: skip
        "arms": {arm: merge_rounds([r[arm] for r in rounds]) for arm in arms},
        "hdpo_over_trl_by_round": ratios_by_round(rounds),
    }
    print(table(R))
    os.makedirs(os.path.dirname(a.output), exist_ok=True)
    with open(a.output, "w") as f:
        json.dump(R, f, indent=1)
    print(f"wrote {a.output}")


if __name__ == "__main__":
    main()
