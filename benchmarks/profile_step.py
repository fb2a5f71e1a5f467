"""Where a training step's time and memory go, on a real pretrained model.

    python benchmarks/profile_step.py --model DIR            # SmolLM2-135M-Instruct, see below
    python benchmarks/profile_step.py --model DIR --cliffs   # every prompt a cliff (λ > 0)

Builds nothing: DIR is a real model folder, e.g. `python ../shared/tools/make_smollm2.py DIR`.
Runs hdpo.train for --steps steps (the first is a warm-up and is not reported) on GSM8K prompts
(tests/data/gsm8k_test.jsonl), 4 prompts x 8 rollouts x 64 new tokens, GRPO without KL, and
attributes the wall time and the peak resident memory of each step to its phases by wrapping the
functions hdpo.py calls (nothing in hdpo.py knows about it):

  generate      engine.generate for the plain rollouts (Algorithm 1, line 1)
  privileged    engine.generate for the privileged rollouts (line 4)
  reward        the reward function (lines 2 and 5)
  teacher       the teacher's forward and top-k (no gradient)
  forward       the student's forwards for L_GRPO and L_JSD (hidden states and chunked head)
  backward      loss.backward() of both losses
  optimizer     gradient clip and the AdamW step
  other         the rest of the step (statistics, logs, checkpoint)

The reward is 1 bit of SHA-256 of the completion (as in bench_step.py), so about half the rollouts
are rewarded and GRPO does real backward work; with --cliffs it is 0 for every plain rollout and 1
for every privileged one (all prompts are cliffs, every privileged rollout is distilled, λ = 0.1).
Peak memory per phase: the rise of the process's VmHWM above its resident set when the phase
starts (Linux, reset through /proc/self/clear_refs). Writes JSON with --output.
"""

import argparse
import atexit
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

import data  # noqa: E402
import hdpo  # noqa: E402


def status_kb(field):
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith(field + ":"))


def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


class Phases:
    """Wall time and peak memory rise per phase; phases do not nest (an inner one pauses the
    outer)."""

    def __init__(self):
        self.time, self.peak, self.stack = defaultdict(float), defaultdict(float), []
        self.process_peak_mb = 0.0  # VmHWM is reset per phase: keep the process's own peak here

    @contextmanager
    def phase(self, name):
        if self.stack and self.stack[-1][0] == name:  # re-entrant: already counted
            yield
            return
        now = time.perf_counter()
        if self.stack:  # pause the outer phase
            outer, t0, base = self.stack[-1]
            self.time[outer] += now - t0
            self.note_peak(outer, base)
        reset_peak()
        self.stack.append((name, time.perf_counter(), status_kb("VmRSS")))
        try:
            yield
        finally:
            name_, t0, base = self.stack.pop()
            self.time[name_] += time.perf_counter() - t0
            self.note_peak(name_, base)
            if self.stack:  # resume the outer phase
                outer = self.stack[-1][0]
                reset_peak()
                self.stack[-1] = (outer, time.perf_counter(), status_kb("VmRSS"))

    def note_peak(self, name, base_kb):
        hwm = status_kb("VmHWM")
        self.peak[name] = max(self.peak[name], (hwm - base_kb) / 1024)
        self.process_peak_mb = max(self.process_peak_mb, hwm / 1024)


def wrap(obj, attr, phases, name_fn):
    fn = getattr(obj, attr)

    def wrapped(*a, **kw):
        with phases.phase(name_fn(*a, **kw)):
            return fn(*a, **kw)

    setattr(obj, attr, wrapped)


def instrument(phases):
    """Wrap what hdpo.train calls. Returns a function that reports the step's phase names."""
    calls = {"generate": 0}

    def gen_name(*a, **kw):
        calls["generate"] += 1
        return "generate" if calls["generate"] == 1 else "privileged"

    wrap(hdpo, "generate", phases, gen_name)
    wrap(hdpo, "optimizer_step", phases, lambda *a, **kw: "optimizer")
    wrap(hdpo, "head_topk", phases, lambda *a, **kw: "teacher")
    for fn in ("completion_hidden", "head_gather_lse"):
        if hasattr(hdpo, fn):
            name = lambda *a, **kw: "forward" if torch.is_grad_enabled() else "teacher"
            wrap(hdpo, fn, phases, name)
    wrap(torch.Tensor, "backward", phases, lambda *a, **kw: "backward")
    return calls


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="a real model folder (SmolLM2-135M-Instruct)")
    p.add_argument("--steps", type=int, default=3, help="steps; the first is a warm-up")
    p.add_argument("--cliffs", action="store_true", help="every prompt a cliff, λ = 0.1")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--output", default=None, help="write the per-phase figures as JSON")
    p.add_argument("extra", nargs="*", help="more hdpo.py flags, after --")
    a = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))

    phases = Phases()
    calls = instrument(phases)

    def scored(text, answer):
        with phases.phase("reward"):
            if a.cliffs:  # plain rollouts 0, privileged ones 1 (told apart by the call order)
                return float(calls["generate"] > 1)
            return float(hashlib.sha256(text.encode()).digest()[0] & 1)

    out = tempfile.mkdtemp(prefix="profile_step_")
    atexit.register(shutil.rmtree, out, ignore_errors=True)  # ~2 GB of checkpoint
    flags = ["--model", a.model, "--dataset", os.path.join(ROOT, "tests/data/gsm8k_test.jsonl")]
    flags += ["--prompts-per-step", "4", "--num-generations", "8", "--max-steps", str(a.steps)]
    flags += ["--max-new-tokens", str(a.max_new_tokens), "--eval-every", "0", "--output-dir", out]
    flags += ["--distill-weight", "0.1" if a.cliffs else "0", "--samples-per-step", "0", *a.extra]
    args = hdpo.parse_args(flags)
    rows = data.load_problems(args.dataset)[:64]
    steps = []
    original_step = hdpo.step_statistics

    def step_end(run, *rest):  # the step's phases end here; what is left is "other"
        steps.append((time.perf_counter(), dict(phases.time), dict(phases.peak)))
        phases.time.clear(), phases.peak.clear()
        calls["generate"] = 0
        return original_step(run, *rest)

    hdpo.step_statistics = step_end
    hdpo.train(args, train_rows=rows, val_rows=[], reward_fn=scored)
    metrics = [json.loads(ln) for ln in open(os.path.join(out, "metrics.jsonl"))]
    report = []
    for m, (_, times, peaks) in list(zip(metrics, steps))[1:]:  # drop the warm-up step
        times["other"] = max(m["step_time_s"] - sum(times.values()), 0.0)
        report.append({"step": m["step"], "step_time_s": m["step_time_s"], "time_s": times,
                       "peak_rise_mb": peaks, "grpo_tokens": m["grpo_tokens"],
                       "distill_tokens": m["distill_tokens"]})  # fmt: skip
    names = ["generate", "privileged", "reward", "teacher", "forward", "backward", "optimizer"]
    names.append("other")
    print(f"{'phase':<12}" + "".join(f"{'step ' + str(r['step']):>14}" for r in report))
    for n in names:
        cells = [
            f"{r['time_s'].get(n, 0):7.2f}s {r['peak_rise_mb'].get(n, 0):5.0f}M" for r in report
        ]
        print(f"{n:<12}" + "".join(f"{c:>14}" for c in cells))
    print(f"{'step':<12}" + "".join(f"{r['step_time_s']:>13.2f}s" for r in report))
    peak = max(phases.process_peak_mb, status_kb("VmHWM") / 1024)
    print(f"peak RSS of the process: {peak:.0f} MB")
    if a.output:
        result = {"setting": vars(a), "steps": report, "process_peak_rss_mb": peak}
        with open(a.output, "w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
