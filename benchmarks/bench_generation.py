"""Benchmark: the generation engine (engine.generate) against transformers' generate, on a real
pretrained model, greedy, on a ragged workload (completions that end at different lengths).

    flock -x /tmp/cpu.lock python benchmarks/bench_generation.py --model DIR
    python benchmarks/bench_generation.py --model DIR --lock /tmp/cpu.lock --sections compile,cap

The model must stop on its own (SmolLM2-135M-Instruct, a real pretrained model, on the
development machine): random-weight models never stop. Prompts: the first --prompts GSM8K test
problems (tests/data/gsm8k_test.jsonl) in the chat template (data.chat_prompt); completions up to
--cap tokens, --batch-size sequences decoding together in both methods:
  generate  transformers' model.generate in fixed batches of --batch-size (left-padded, its
            dynamic cache): a batch runs until its slowest row ends;
  engine    engine.generate (continuous batching).
Useful tokens: each completion up to and including its first EOS. Greedy completions are
compared token for token. Host syncs per decode step are counted by a hook during an untimed
engine call (cap 128): device-to-host reads (Tensor.tolist/item/cpu/numpy, bool/int/float of a
tensor) and tensors built from host lists on a device (torch.tensor(..., device=...)), both of
which make the host wait for a GPU; divided by the engine's decode steps; with the host's reads
every step (CPU's setting) and every SYNC_EVERY["cuda"] steps (CUDA's).
--sections (default ragged; the sections not run stay in --output as they were):
  ragged   the above;
  compile  the engine with its decode forward under torch.compile(dynamic=True) against the
           eager engine, on --compile-prompts prompts (the compile time reported apart);
  cap      the prompts whose completions ended before --cap (in the ragged section) rerun at
           max_new_tokens 4096: the cost of a high cap that is not used.

Threads: torch.set_num_threads(--threads). --lock FILE: each timed run holds an exclusive flock
on FILE. Results: --output (benchmarks/results/bench_generation.json).
"""

import argparse
import contextlib
import fcntl
import json
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository root
sys.path.insert(0, HERE)


@contextlib.contextmanager
def locked(path):
    """An exclusive flock on path for one timed run (nothing when path is None)."""
    if path is None:
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def timed(lock, fn):
    with locked(lock):
        t = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t


def gsm8k_prompts(tok, n):
    from data import chat_prompt

    with open(os.path.join(HERE, "tests", "data", "gsm8k_test.jsonl")) as f:
        rows = [json.loads(line) for _, line in zip(range(n), f)]
    return [chat_prompt(tok, r["question"]) for r in rows]


def cut_at_eos(toks, eos):
    t = next((i for i, x in enumerate(toks) if x in eos), None)
    return toks if t is None else toks[: t + 1]


def hf_generate(model, tok, prompts, cap, batch, eos):
    """transformers' generate, greedy, in fixed batches. -> completions (EOS-inclusive)."""
    import torch

    tok.padding_side = "left"
    outs = []
    for b in range(0, len(prompts), batch):
        enc = tok(prompts[b : b + batch], return_tensors="pt", padding=True,
                  add_special_tokens=False)  # fmt: skip
        with torch.no_grad():
            g = model.generate(**enc, do_sample=False, max_new_tokens=cap, eos_token_id=list(eos),
                               pad_token_id=tok.pad_token_id, top_k=None, top_p=None,
                               temperature=None)  # fmt: skip
        outs += [cut_at_eos(r, eos) for r in g[:, enc.input_ids.shape[1] :].tolist()]
    return outs


def engine_generate(model, tok, prompts, cap, batch, eos, stats=None):
    import engine

    outs = engine.generate(model, tok, prompts, greedy=True, max_new_tokens=cap, batch_size=batch,
                           eos_ids=eos, stats=stats)  # fmt: skip
    return [o["completion_ids"] for o in outs]


@contextlib.contextmanager
def count_host_syncs():
    """Count, while active, the calls that make the host wait for a GPU: device-to-host reads
    and tensors built on a device from host data. -> a dict {"reads": n, "builds": n}."""
    import torch

    counts = {"reads": 0, "builds": 0}
    saved = {}

    def reader(name):
        orig = saved[name] = getattr(torch.Tensor, name)

        def wrapped(self, *a, **kw):
            counts["reads"] += 1
            return orig(self, *a, **kw)

        return wrapped

    def builder(name):
        orig = saved[name] = getattr(torch, name)

        def wrapped(*a, **kw):
            counts["builds"] += kw.get("device") is not None
            return orig(*a, **kw)

        return wrapped

    reads = ("tolist", "item", "cpu", "numpy", "__bool__", "__int__", "__float__")
    for name in reads:
        setattr(torch.Tensor, name, reader(name))
    for name in ("tensor", "as_tensor"):
        setattr(torch, name, builder(name))
    try:
        yield counts
    finally:
        for name in reads:
            setattr(torch.Tensor, name, saved[name])
        for name in ("tensor", "as_tensor"):
            setattr(torch, name, saved[name])


def compare(outs, ref):
    """How many completions equal the reference's, and where the others first differ."""
    same, first_diff = 0, []
    for a, b in zip(outs, ref):
        if a == b:
            same += 1
        else:
            first_diff.append(
                next((t for t, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            )
    return {"identical": same, "of": len(ref), "first_difference_at": first_diff}


def host_syncs_per_step(model, tok, prompts, batch, eos, cap=128, engine_module=None):
    """The hook's counts during an (untimed) engine call on the ragged prompts at a cap of 128,
    per decode step; engine_module: another engine module to count (the default: engine)."""
    import engine

    stats, mod = {}, engine_module or engine
    with count_host_syncs() as counts:
        mod.generate(model, tok, prompts, greedy=True, max_new_tokens=cap, batch_size=batch,
                     eos_ids=eos, stats=stats)  # fmt: skip
    steps = stats["decode_steps"]
    res = {"reads": counts["reads"] / steps, "builds_on_device": counts["builds"] / steps}
    res["engine_count"] = stats.get("host_syncs", float("nan")) / steps
    res = {k: round(v, 3) for k, v in res.items()}
    return {**res, "decode_steps": steps, "cap": cap, "sequences": len(prompts)}


def ragged(a, model, tok, eos):
    """Rounds of (generate, engine) on the same prompts; the engine's host syncs, counted."""
    prompts = gsm8k_prompts(tok, a.prompts)
    rounds = []
    for k in range(a.rounds):
        print(f"[ragged] round {k + 1}: generate ...", flush=True)
        ref, t_hf = timed(
            a.lock, lambda: hf_generate(model, tok, prompts, a.cap, a.batch_size, eos)
        )
        print(f"[ragged] round {k + 1}: generate {t_hf:.1f} s; engine ...", flush=True)
        stats = {}
        outs, t_eng = timed(
            a.lock,
            lambda st=stats: engine_generate(model, tok, prompts, a.cap, a.batch_size, eos, st),
        )
        useful = sum(map(len, outs))
        rounds.append({
            "generate_s": round(t_hf, 2), "engine_s": round(t_eng, 2),
            "useful_tokens": useful, "generate_useful_tokens": sum(map(len, ref)),
            "engine_over_generate": round(t_hf / t_eng, 3),
            "greedy_vs_generate": compare(outs, ref), "engine_stats": stats,
        })  # fmt: skip
        print(f"[ragged] round {k + 1}: {rounds[-1]}", flush=True)
    import engine

    syncs = {"cpu": host_syncs_per_step(model, tok, prompts, a.batch_size, eos)}
    saved = dict(engine.SYNC_EVERY)
    engine.SYNC_EVERY["cpu"] = engine.SYNC_EVERY["cuda"]  # the host's reads as on CUDA
    try:
        syncs["reads_every_%d_steps_as_on_cuda" % saved["cuda"]] = host_syncs_per_step(
            model, tok, prompts, a.batch_size, eos
        )
    finally:
        engine.SYNC_EVERY.update(saved)
    ratios = sorted(r["engine_over_generate"] for r in rounds)
    return {
        "setting": {
            "prompts": len(prompts),
            "cap": a.cap,
            "batch_size": a.batch_size,
            "greedy": True,
        },  # fmt: skip
        "rounds": rounds,
        "engine_over_generate_median": ratios[len(ratios) // 2],
        "completion_lengths": [len(c) for c in outs],
        "ended_before_cap": [i for i, c in enumerate(outs) if c and c[-1] in eos],
        "host_syncs_per_decode_step": syncs,
    }


def compile_check(a, model, tok, eos):
    """The engine with its decode forward compiled (torch.compile, dynamic shapes) against the
    eager engine: ms per decode step (the difference of a long and a short run over the
    difference of their steps), the compile time, greedy completions compared."""
    import torch

    import engine

    prompts = gsm8k_prompts(tok, a.compile_prompts)
    never = [-5]  # an id that never comes: every row runs to its cap

    def per_step():
        runs = {}
        for cap in (2, 66):
            stats = {}
            outs, dt = timed(a.lock, lambda cap=cap, stats=stats: engine_generate(
                model, tok, prompts, cap, len(prompts), never, stats))  # fmt: skip
            runs[cap] = (outs, dt, stats["decode_steps"])
        (_, t0, s0), (outs, t1, s1) = runs[2], runs[66]
        return outs, round(1e3 * (t1 - t0) / (s1 - s0), 1)

    res = {"rows": len(prompts)}
    ref, res["eager_ms_per_step"] = per_step()
    # inductor cannot lower oneDNN's prepacked linear (a LoweringException): the compiled forward
    # runs the plain weights, and the eager engine is measured that way too
    eager, packed = engine._decode_forward, engine._packed_linears
    engine._packed_linears = lambda model, rows: contextlib.nullcontext()
    try:
        _, res["eager_unpacked_ms_per_step"] = per_step()
        engine._decode_forward = torch.compile(eager, dynamic=True)
        _, first = timed(
            a.lock, lambda: engine_generate(model, tok, prompts, 8, len(prompts), never)
        )
        res["compile_first_call_s"] = round(first, 1)
        outs, res["compiled_ms_per_step"] = per_step()
    finally:
        engine._decode_forward, engine._packed_linears = eager, packed
    res["compiled_over_eager_time"] = round(
        res["compiled_ms_per_step"] / res["eager_ms_per_step"], 3
    )
    res["greedy_same"] = outs == ref
    print(f"[compile] {res}", flush=True)
    return res


def cap_check(a, model, tok, eos, ended):
    """The prompts whose completions ended before --cap (ended: their indices, from the ragged
    section) at caps --cap and 4096: the same completions, and the cost of the high cap."""
    prompts = gsm8k_prompts(tok, a.prompts)
    early = [prompts[i] for i in ended][: a.batch_size]
    res = {"prompts": len(early)}
    runs = {}
    for cap in (a.cap, 4096):
        runs[cap], dt = timed(
            a.lock, lambda cap=cap: engine_generate(model, tok, early, cap, a.batch_size, eos)
        )
        res[f"engine_{cap}_s"] = round(dt, 2)
    res["same_completions"] = runs[a.cap] == runs[4096]
    res["ratio_4096_vs_cap"] = round(res["engine_4096_s"] / res[f"engine_{a.cap}_s"], 3)
    print(f"[cap] {res}", flush=True)
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="a model folder that stops on its own")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--cap", type=int, default=768, help="max_new_tokens")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--rounds", type=int, default=1, help="(generate, engine) pairs, in turn")
    p.add_argument("--sections", default="ragged", help="of ragged,compile,cap; the others in "
                   "--output are kept")  # fmt: skip
    p.add_argument("--compile-prompts", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lock", default=None, help="flock this file around each timed run")
    p.add_argument("--output", default=os.path.join(HERE, "benchmarks", "results",
                                                    "bench_generation.json"))  # fmt: skip
    a = p.parse_args(argv)
    import torch
    import transformers

    import engine
    from harness.loading import load_model, quiet_libraries

    torch.set_num_threads(a.threads)
    quiet_libraries()
    model, tok = load_model(a.model, device="cpu", dtype=torch.float32)
    eos = engine.eos_token_ids(tok, model)
    R = {
        "command": "python benchmarks/bench_generation.py " + " ".join(argv or sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "threads": a.threads, "torch": torch.__version__,
                    "transformers": transformers.__version__,
                    "python": platform.python_version(), "processor": platform.machine()},
        "model": os.path.basename(os.path.normpath(a.model)),
        "eos_ids": eos,
    }  # fmt: skip
    sections = a.sections.split(",")
    if os.path.exists(a.output):  # the sections not run now stay as they were
        with open(a.output) as f:
            R = {**json.load(f), **R}
    command = R.pop("command")
    threads = R["machine"].pop("threads")
    if "ragged" in sections:
        R["ragged"] = ragged(a, model, tok, eos)
    if "compile" in sections:
        R["compile"] = compile_check(a, model, tok, eos)
    if "cap" in sections:
        R["cap"] = cap_check(a, model, tok, eos, R["ragged"]["ended_before_cap"])
    for name in sections:  # how each section was run
        R[name].update(command=command, threads=threads)
    os.makedirs(os.path.dirname(a.output), exist_ok=True)
    with open(a.output, "w") as f:
        json.dump(R, f, indent=1)
        f.write("\n")
    print(f"wrote {a.output}")


if __name__ == "__main__":
    main()
