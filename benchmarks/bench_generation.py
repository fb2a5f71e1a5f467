"""Benchmark: the generation engine (engine.generate) on a real pretrained model, on this machine.

    python benchmarks/bench_generation.py --model /work/smollm2 --lock /work/cpu.lock
    python benchmarks/bench_generation.py --model DIR --sections ragged,cap --ragged-prompts 16

The model should stop on its own (SmolLM2-135M-Instruct: ../shared/tools/make_smollm2.py builds
it offline): random-weight models never stop and their cost is the vocabulary head. Prompts: the
first GSM8K test problems (tests/data/gsm8k_test.jsonl) in the chat template (data.chat_prompt).
Sections, all in one run (ratios are taken within it):

  ragged   greedy, cap --ragged-cap (768), --ragged-prompts (64) prompts, --batch-size (32) rows:
           transformers' `generate` in fixed batches (dynamic cache; what a new user would call),
           the engine before this change (--before-ref: static cache sized to the cap, fixed
           batches that wait for their slowest row), transformers' continuous batching
           (`generate_batch`, paged attention) and engine.generate. Useful tokens: each
           completion up to and including its first EOS (or all its tokens at the cap).
           Greedy completions are compared token for token with `generate`'s.
  cap      the same prompts' completions that ended before the cap (the first --cap-prompts of
           them): engine.generate at max_new_tokens 4096 and 768 (same completions), and with
           --cap-before the engine before this change for contrast.
  entropy  the sampler with the entropy (sample_categorical) against the sampler before this
           change (no entropy) on the same [B, V] logits, for this model's vocabulary and
           Qwen's 151,936; and the time per decode step of a sampled generation, for scale.
  step     whole hdpo.py steps at --max-new-tokens 4096 (default --step-args), before (a
           `git archive` of --before-ref) and after (this tree), each in its own process; times
           from its metrics.jsonl.

Threads: torch.set_num_threads(--threads) here and OMP_NUM_THREADS=--threads,
OMP_WAIT_POLICY=PASSIVE in the children. --lock FILE: each timed measurement holds an exclusive
flock on FILE (others' jobs run between measurements, none during one). Results: --output
(benchmarks/bench_generation_results.json).
"""

import argparse
import contextlib
import fcntl
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository root
sys.path.insert(0, HERE)

LOCK = None


@contextlib.contextmanager
def locked():
    """Hold the exclusive lock (if any) for one measurement."""
    if LOCK is None:
        yield
        return
    with open(LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def timed(fn):
    with locked():
        t = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t


def git_export(ref, dest):
    """The repository at `ref` (git archive) in dest."""
    data = subprocess.run(["git", "archive", ref], cwd=HERE, check=True, capture_output=True).stdout
    path = os.path.join(dest, "tree.tar")
    with open(path, "wb") as f:
        f.write(data)
    with tarfile.open(path) as t:
        t.extractall(dest, filter="data")
    return dest


def import_from(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def gsm8k_prompts(tok, n):
    from data import chat_prompt

    with open(os.path.join(HERE, "tests", "data", "gsm8k_test.jsonl")) as f:
        rows = [json.loads(line) for _, line in zip(range(n), f)]
    return [chat_prompt(tok, r["question"]) for r in rows]


def cut_at_eos(toks, eos):
    t = next((i for i, x in enumerate(toks) if x in eos), None)
    return toks if t is None else toks[: t + 1]


# ----------------------------------------------------------------------------------------------
# Generation methods: prompts (strings) -> completions (token lists, EOS-inclusive), greedy


def hf_generate(model, tok, prompts, cap, batch, eos):
    import torch

    tok.padding_side = "left"
    outs = []
    for b in range(0, len(prompts), batch):
        enc = tok(
            prompts[b : b + batch], return_tensors="pt", padding=True, add_special_tokens=False
        )
        with torch.no_grad():
            g = model.generate(
                **enc,
                do_sample=False,
                max_new_tokens=cap,
                eos_token_id=list(eos),
                pad_token_id=tok.pad_token_id,
                top_k=None,
                top_p=None,
                temperature=None,
            )
        outs += [cut_at_eos(r, eos) for r in g[:, enc.input_ids.shape[1] :].tolist()]
    return outs


def hf_generate_batch(model, tok, prompts, cap, batch, eos):
    import torch
    from transformers import ContinuousBatchingConfig, GenerationConfig

    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    pages = -(-(max(map(len, ids)) + cap) // 256)
    cb = ContinuousBatchingConfig(num_blocks=batch * pages + 8, max_requests_per_batch=batch)
    gc = GenerationConfig(
        do_sample=False, max_new_tokens=cap, eos_token_id=list(eos), pad_token_id=tok.pad_token_id
    )
    with torch.no_grad():
        res = model.generate_batch(
            ids, generation_config=gc, continuous_batching_config=cb, progress_bar=False
        )
    by_index = sorted(res.items(), key=lambda kv: int(kv[0].rsplit("_", 1)[-1]))
    return [cut_at_eos(list(v.generated_tokens), eos) for _, v in by_index]


def engine_generate(engine, model, tok, prompts, cap, batch, eos):
    outs = engine.generate(
        model, tok, prompts, greedy=True, max_new_tokens=cap, batch_size=batch, eos_ids=eos
    )
    return [o["completion_ids"] for o in outs]


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


# ----------------------------------------------------------------------------------------------
# Sections


def section_ragged(a, model, tok, engine, before, eos, R):
    prompts = gsm8k_prompts(tok, a.ragged_prompts)
    methods = {
        "hf_generate": lambda: hf_generate(model, tok, prompts, a.ragged_cap, a.batch_size, eos),
        "engine_before": lambda: engine_generate(
            before, model, tok, prompts, a.ragged_cap, a.batch_size, eos
        ),
        "hf_generate_batch": lambda: hf_generate_batch(
            model, tok, prompts, a.ragged_cap, a.batch_size, eos
        ),
        "engine": lambda: engine_generate(
            engine, model, tok, prompts, a.ragged_cap, a.batch_size, eos
        ),
    }
    res, outs = {}, {}
    for name, fn in methods.items():
        if name not in a.methods:
            continue
        print(f"[ragged] {name} ...", flush=True)
        try:
            outs[name], dt = timed(fn)
        except Exception as e:  # noqa: BLE001 - report, do not fail the benchmark
            res[name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
            continue
        useful = sum(map(len, outs[name]))
        res[name] = {
            "wall_s": round(dt, 2),
            "useful_tokens": useful,
            "useful_tokens_per_s": round(useful / dt, 2),
        }
        print(f"[ragged] {name}: {res[name]}", flush=True)
    if "hf_generate" in outs:
        ref, base = outs["hf_generate"], res["hf_generate"]["useful_tokens_per_s"]
        for name in outs:
            res[name]["vs_hf_generate"] = round(res[name]["useful_tokens_per_s"] / base, 2)
            if name != "hf_generate":
                res[name]["greedy_vs_hf_generate"] = compare(outs[name], ref)
    ref = outs.get("engine") or next(iter(outs.values()), [])
    lens = [len(c) for c in ref]
    res["completion_lengths"] = lens
    res["ended_before_cap"] = sum(1 for c in ref if c and c[-1] in eos)
    R["ragged"] = {
        "setting": {
            "prompts": len(prompts),
            "cap": a.ragged_cap,
            "batch_size": a.batch_size,
            "greedy": True,
        },
        **res,
    }
    return prompts, ref


def section_cap(a, model, tok, engine, before, eos, R, prompts, ref):
    """Completions that end early: the cost of a cap of 4096 against 768."""
    early = [p for p, c in zip(prompts, ref) if c and c[-1] in eos and len(c) < 768]
    early = early[: a.cap_prompts]
    res = {"setting": {"prompts": len(early), "batch_size": a.batch_size, "greedy": True}}
    if not early:  # every completion ran to the ragged cap: nothing to measure
        res["error"] = "no completion ended before the cap in the ragged section"
        R["cap"] = res
        return
    outs = {}
    for label, mod in (("engine", engine), ("engine_before", before)):
        if label not in a.methods or (label == "engine_before" and not a.cap_before):
            continue
        for cap in (768, 4096):
            print(f"[cap] {label} {cap} ...", flush=True)
            outs[label, cap], dt = timed(
                lambda mod=mod, cap=cap: engine_generate(
                    mod, model, tok, early, cap, a.batch_size, eos
                )
            )
            res[f"{label}_{cap}_s"] = round(dt, 2)
        res[f"{label}_ratio_4096_vs_768"] = round(res[f"{label}_4096_s"] / res[f"{label}_768_s"], 3)
        res[f"{label}_same_completions"] = outs[label, 768] == outs[label, 4096]
        print(f"[cap] {res}", flush=True)
    res["useful_tokens"] = sum(map(len, outs.get(("engine", 768), [])))
    R["cap"] = res


def old_sampler(logits, temperature=1.0, block=128):
    """The sampler before this change (no entropy), for the cost comparison."""
    import torch

    p = logits.float()
    if temperature != 1.0:
        p.div_(temperature)
    p = p.sub_(p.amax(-1, keepdim=True)).exp_()
    B, V = p.shape
    nb = -(-V // block)
    pb = p.view(B, nb, block)
    w = pb.sum(-1).double()
    c = w.cumsum(-1)
    u = torch.rand(B, 1, dtype=torch.float64) * c[:, -1:]
    b = torch.searchsorted(c, u, right=True).clamp_max_(nb - 1)
    u = (u - (c.gather(1, b) - w.gather(1, b))).clamp_min_(0)
    inner = pb[torch.arange(B), b[:, 0]].double().cumsum(-1)
    u = torch.minimum(u, inner[:, -1:] * (1 - 1e-12))
    j = torch.searchsorted(inner, u, right=True).clamp_max_(block - 1)
    return (b[:, 0] * block + j[:, 0]).clamp_max_(V - 1)


def section_entropy(a, model, tok, engine, eos, R):
    import torch

    res = {}
    V_model = model.get_output_embeddings().weight.shape[0]
    with locked():
        for V in (V_model, 151936):
            for B in (a.batch_size,):
                g = torch.Generator().manual_seed(0)
                base = torch.randn(B, V, generator=g) * 4  # [B, V]
                times = {}
                with_entropy = lambda x: engine.sample_categorical(x)[0]
                for name, fn in (("without_entropy", old_sampler), ("with_entropy", with_entropy)):
                    buf = base.clone()
                    fn(buf)  # warm
                    ts = []
                    for _ in range(a.entropy_repeats):
                        buf.copy_(base)
                        t = time.perf_counter()
                        fn(buf)
                        ts.append(time.perf_counter() - t)
                    times[name] = round(1e3 * sorted(ts)[len(ts) // 2], 3)
                res[f"sampler_ms_B{B}_V{V}"] = times
    # a sampled generation, for the time of one decode step at this batch
    prompts = gsm8k_prompts(tok, a.batch_size)
    stats = {}
    torch.manual_seed(0)
    out, dt = timed(
        lambda: engine.generate(
            model,
            tok,
            prompts,
            temperature=1.0,
            max_new_tokens=a.entropy_tokens,
            batch_size=a.batch_size,
            eos_ids=eos,
            stats=stats,
        )
    )
    res["sampled_generation"] = {
        "sequences": len(out),
        "cap": a.entropy_tokens,
        "wall_s": round(dt, 2),
        "decode_steps": stats["decode_steps"],
        "ms_per_decode_step": round(1e3 * dt / max(stats["decode_steps"], 1), 1),
        "mean_entropy_per_token_nats": round(
            sum(o["entropy"] for o in out) / sum(len(o["completion_ids"]) for o in out), 3
        ),
    }
    print(f"[entropy] {res}", flush=True)
    R["entropy"] = res


def run_hdpo(tree, a, out_dir, log):
    env = dict(
        os.environ,
        OMP_NUM_THREADS=str(a.threads),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    cmd = [
        sys.executable,
        "hdpo.py",
        "--model",
        a.model,
        "--output-dir",
        out_dir,
        *a.step_args.split(),
    ]
    with locked(), open(log, "w") as f:
        t = time.perf_counter()
        rc = subprocess.run(
            cmd, cwd=tree, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=a.step_timeout
        ).returncode
        wall = time.perf_counter() - t
    rows = []
    if os.path.exists(os.path.join(out_dir, "metrics.jsonl")):
        with open(os.path.join(out_dir, "metrics.jsonl")) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    keep = (
        "step",
        "step_time_s",
        "generation_time_s",
        "train_time_s",
        "completion_len_mean",
        "truncated_fraction",
        "num_cliffs",
        "privileged_rollouts",
        "grpo_tokens",
    )
    return {
        "returncode": rc,
        "process_wall_s": round(wall, 1),
        "steps": [{k: r.get(k) for k in keep} for r in rows],
    }


def section_step(a, tmp, R):
    res = {"command": f"python hdpo.py --model {a.model} --output-dir OUT {a.step_args}"}
    trees = {"before": git_export(a.before_ref, os.path.join(tmp, "before")), "after": HERE}
    for label in ("before", "after"):
        if label == "before" and "engine_before" not in a.methods:
            continue
        print(f"[step] {label} ...", flush=True)
        res[label] = run_hdpo(
            trees[label], a, os.path.join(tmp, f"run_{label}"), os.path.join(tmp, f"{label}.log")
        )
        print(f"[step] {label}: {res[label]}", flush=True)
    if "before" in res and res["before"]["steps"] and res["after"]["steps"]:
        tot = lambda lab, k: sum(s[k] for s in res[lab]["steps"])
        for k in ("step_time_s", "generation_time_s"):
            res[f"before_over_after_{k}"] = round(tot("before", k) / tot("after", k), 2)
    R["step"] = res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=os.environ.get("HDPO_SMOLLM2", "/work/smollm2"))
    p.add_argument("--sections", default="ragged,cap,entropy,step")
    p.add_argument("--methods", default="hf_generate,engine_before,hf_generate_batch,engine")
    p.add_argument("--before-ref", default="b156962", help="the commit with the engine before")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--ragged-prompts", type=int, default=64)
    p.add_argument("--ragged-cap", type=int, default=768)
    p.add_argument("--cap-prompts", type=int, default=16)
    p.add_argument("--cap-before", action="store_true", help="the cap section for the old engine")
    p.add_argument("--entropy-repeats", type=int, default=20)
    p.add_argument("--entropy-tokens", type=int, default=64)
    p.add_argument(
        "--step-args",
        default="--dataset tests/data/gsm8k_test.jsonl "
        "--prompts-per-step 4 --num-generations 8 --max-steps 2 --eval-every 0 "
        "--max-new-tokens 4096 --samples-per-step 0",
    )
    p.add_argument("--step-timeout", type=int, default=4 * 3600)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lock", default=None, help="flock this file around each measurement")
    p.add_argument(
        "--output", default=os.path.join(HERE, "benchmarks", "bench_generation_results.json")
    )
    a = p.parse_args(argv)
    global LOCK
    LOCK = a.lock
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch
    import transformers

    torch.set_num_threads(a.threads)
    import engine
    from harness.loading import load_model, quiet_libraries

    quiet_libraries()
    sections = a.sections.split(",")
    a.methods = a.methods.split(",")
    R = {
        "machine": {
            "cpus": os.cpu_count(),
            "threads": a.threads,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        },
        "model": a.model,
        "before_ref": a.before_ref,
    }
    with tempfile.TemporaryDirectory(prefix="bench_gen_") as tmp:
        src = subprocess.run(
            ["git", "show", f"{a.before_ref}:engine.py"],
            cwd=HERE,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        with open(os.path.join(tmp, "engine_before.py"), "w") as f:
            f.write(src)
        before = import_from(os.path.join(tmp, "engine_before.py"), "engine_before")
        model, tok = load_model(a.model, device="cpu", dtype=torch.float32)
        eos = engine.eos_token_ids(tok, model)
        R["eos_ids"] = eos
        if "ragged" in sections or "cap" in sections:
            prompts, ref = section_ragged(a, model, tok, engine, before, eos, R)
        if "cap" in sections:
            section_cap(a, model, tok, engine, before, eos, R, prompts, ref)
        if "entropy" in sections:
            section_entropy(a, model, tok, engine, eos, R)
        if "step" in sections:
            section_step(a, tmp, R)
    with open(a.output, "w") as f:
        json.dump(R, f, indent=1)
        f.write("\n")
    print(f"wrote {a.output}")


if __name__ == "__main__":
    main()
