"""One prepared check for a lent GPU machine: the generation engine and HDPO steps at the paper's
per-step scale, on Qwen2.5-Math-1.5B's shape with random weights. About 3-4 minutes on an H100
(at most 6), so that a rerun fits in a 15-minute lease.

    python benchmarks/gpu_check.py --output $OUT/gpu_check.json   # on the GPU machine
    python benchmarks/gpu_check.py --smoke                         # CPU, tiny sizes, < 20 s

It needs only the working tree and torch + transformers (no datasets, nothing downloaded):
tests/data/qwen2.5-math-1.5b (config and tokenizer) and tests/data/gsm8k_test.jsonl. It writes
nothing but the JSON: the run's folder is temporary and removed, checkpoints are not saved.

Random weights never emit EOS, so a hook on the model's final hidden states forces one: at a
position whose (token, position) hash hits 1 / --mean-length, the hidden state becomes the EOS
embedding's direction, so completion lengths are geometric with that mean (a few reach the cap:
the ragged case). The reward forces cliffs: 0 on the prompts whose answer hashes even, one
SHA-256 bit of the completion on the others; the R = 1 filter keeps half of the privileged
rollouts; so privileged generation and the JSD loss run at scale.

Parts, each in the JSON:
  versions     torch, transformers, CUDA, the device;
  memory       KV bytes per token (engine.kv_bytes_per_token), the KV cache of 384 and 512 rows x
               4,096 tokens, computed and (GPU, after the training steps, AdamW's state
               allocated) allocated to see whether it fits; the generation plan's line;
  decode       --decode-steps decode steps at 128 and 512 rows (every row to the cap), with and
               without CUDA graphs: ms per step, kernel launches and host syncs per step (GPU:
               torch.profiler's cudaLaunchKernel / cudaGraphLaunch and synchronize / DtoH copy
               events, the difference of a 2N- and an N-step run over N), the attention kernels;
  steps        hdpo.train for --steps steps of --prompts-per-step x --num-generations rollouts at
               --max-new-tokens, one validation at the end; per step the time of generation,
               privileged generation, forward/backward (head included), the head alone
               (HeadGatherLSE forward and backward, head_topk), the optimiser, and validation.
"""

import argparse
import contextlib
import hashlib
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
DATA = os.path.join(ROOT, "tests", "data")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prompts-per-step", type=int, default=32)
    p.add_argument("--num-generations", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=1024)
    p.add_argument("--mean-length", type=int, default=300, help="forced EOS: mean completion")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--eval-problems", type=int, default=64)
    p.add_argument("--eval-n", type=int, default=8)
    p.add_argument("--generation-batch-size", type=int, default=384, help="rows decoding together")
    p.add_argument("--decode-rows", type=int, nargs="+", default=[128, 512])
    p.add_argument("--decode-steps", type=int, default=20)
    p.add_argument("--smoke", action="store_true", help="tiny sizes on CPU: does it run")
    p.add_argument("--output", default=None, help="write the results as JSON")
    a = p.parse_args(argv)
    if a.smoke:
        a.prompts_per_step, a.num_generations, a.max_new_tokens, a.mean_length = 2, 4, 16, 6
        a.steps, a.eval_problems, a.eval_n, a.generation_batch_size = 2, 4, 2, 8
        a.decode_rows, a.decode_steps = [4, 8], 4
    return a


def build_model(a, torch):
    """Qwen2.5-Math-1.5B's architecture (--smoke: 2 layers, 64 wide) with random weights, fp32,
    made on the device; its tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = os.path.join(DATA, "qwen2.5-math-1.5b")
    config = AutoConfig.from_pretrained(folder)
    if a.smoke:
        config.update(dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16))  # fmt: skip
        if getattr(config, "layer_types", None):
            config.layer_types = config.layer_types[:2]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(
            config, dtype=torch.float32, attn_implementation="sdpa"
        )
    return model.eval(), tokenizer


def force_eos(model, eos, mean_length, torch):
    """A forward hook on the base model: where hash(token, position) % mean_length == 0 the final
    hidden state becomes 100 x the EOS row of the lm_head (normalised), so the next token is EOS.
    Only forwards given input_ids (the engine's); the losses' forwards are left alone."""
    w = model.get_output_embeddings().weight
    target = (100 * w[eos] / w[eos].norm()).detach()  # [H]

    def hook(module, args, kwargs, output):
        ids, pos = kwargs.get("input_ids"), kwargs.get("position_ids")
        if ids is None or pos is None:
            return
        x = ids * 0x9E3779B1 + pos * 0x85EBCA77  # [n, q] int64 mixing, wraps
        x = (x ^ (x >> 15)) * 0x2C1B3C6D
        hit = ((x ^ (x >> 12)) % mean_length == 0)[..., None]  # [n, q, 1]
        h = output.last_hidden_state  # [n, q, H]
        output.last_hidden_state = torch.where(hit, target.to(h.dtype), h)
        return output

    return model.base_model.register_forward_hook(hook, with_kwargs=True)


def gsm8k_rows(path):
    """The GSM8K problems of a .jsonl file as training rows, read here: data.load_problems goes
    through the datasets package, which the GPU machine does not have."""
    rows = []
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            solution, _, answer = r["answer"].rpartition("####")
            rows.append({"problem": r["question"], "answer": answer.strip().replace(",", ""),
                         "solution": solution.strip()})  # fmt: skip
    return rows


def sha_bit(text):
    return hashlib.sha256(text.encode()).digest()[0] & 1


class Clock:
    """Seconds spent in named parts (device synchronised around each), summed until taken."""

    def __init__(self, torch):
        self.torch, self.totals = torch, {}

    def sync(self):
        if self.torch.cuda.is_available():
            self.torch.cuda.synchronize()

    def wrap(self, name, fn):
        def timed(*args, **kwargs):
            self.sync()
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.sync()
                self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - t

        return timed

    def take(self):
        out, self.totals = {k: round(v, 3) for k, v in self.totals.items()}, {}
        return out


def profile_counts(fn, torch):
    """fn() under torch.profiler (GPU) -> (kernel launches, host syncs, attention kernels)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
    launches = syncs = 0
    attention = {}
    for e in prof.key_averages():
        name = e.key
        if name in ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel",
                    "cudaGraphLaunch"):  # fmt: skip
            launches += e.count
        elif name in ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize"):
            syncs += e.count
        elif name.startswith("Memcpy DtoH"):
            syncs += e.count
        low = name.lower()
        if any(k in low for k in ("fmha", "flash", "attention", "attn")) and "aten::" not in low:
            attention[name[:100]] = e.count
    return launches, syncs, attention


def decode_profile(a, model, tok, prompts, torch, engine):
    """Every row to the cap (an EOS that never comes), N and 2N decode steps, with and without
    CUDA graphs: per step = (2N run - N run) / N."""
    cuda = torch.cuda.is_available()
    res = {}
    for rows in a.decode_rows:
        ps = (prompts * (-(-rows // len(prompts))))[:rows]
        for graphs in (True, False) if cuda else (False,):
            engine.CUDA_GRAPHS = graphs
            runs = {}
            for n in (a.decode_steps, 2 * a.decode_steps):
                stats = {}

                def call(n=n, stats=stats, ps=ps, rows=rows):
                    engine.generate(model, tok, ps, greedy=True, max_new_tokens=n + 1,
                                    batch_size=rows, eos_ids=[-5], stats=stats)  # fmt: skip

                if cuda:
                    torch.cuda.synchronize()
                t = time.perf_counter()
                call()
                if cuda:
                    torch.cuda.synchronize()
                wall = time.perf_counter() - t
                counts = profile_counts(call, torch) if cuda else (None, None, {})
                runs[n] = (wall, stats, counts)
            (w1, s1, c1), (w2, s2, c2) = runs[a.decode_steps], runs[2 * a.decode_steps]
            d = s2["decode_steps"] - s1["decode_steps"]
            r = {"ms_per_step": round(1e3 * (w2 - w1) / d, 2),
                 "engine_host_syncs_per_step": round((s2["host_syncs"] - s1["host_syncs"]) / d, 3),
                 "graphs_captured": s2["graphs"], "cache_cols": s2["peak_cols"]}  # fmt: skip
            if cuda:
                r["launches_per_step"] = round((c2[0] - c1[0]) / d, 1)
                r["host_syncs_per_step"] = round((c2[1] - c1[1]) / d, 3)
                r["attention_kernels"] = c2[2]
            res[f"{rows}_rows_{'graphs' if graphs else 'eager'}"] = r
            print(f"[gpu_check] decode {rows} rows, graphs {graphs}: {r}", flush=True)
    engine.CUDA_GRAPHS = True
    return res


def kv_memory(model, torch, engine, rows_list=(384, 512), width=4096):
    """The engine's KV cache at rows x width: computed, and on a GPU allocated (bf16) to see
    whether it fits beside what the run holds now."""
    per_token = engine.kv_bytes_per_token(model.config, torch.bfloat16)
    res = {"kv_bytes_per_token_bf16": per_token}
    for rows in rows_list:
        r = {"gib": round(rows * width * per_token / 2**30, 2)}
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            r["allocated_before_gib"] = round(torch.cuda.memory_allocated() / 2**30, 2)
            cfg = model.config.get_text_config()
            shape = (rows, cfg.num_key_value_heads, width, per_token // 4 // cfg.num_key_value_heads
                     // cfg.num_hidden_layers)  # fmt: skip
            bufs = []
            try:
                for _ in range(2 * cfg.num_hidden_layers):
                    bufs.append(torch.empty(shape, dtype=torch.bfloat16, device="cuda"))
                r["fits"] = True
            except torch.cuda.OutOfMemoryError:
                r["fits"] = False
            del bufs
            torch.cuda.empty_cache()
        res[f"{rows}_rows_x_{width}"] = r
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        budget = 0.9 * total - (total - free)  # AdamW's state is allocated by now, and the
        budget += 2 * sum(p.numel() for p in model.parameters())  # bf16 copy the plan counts
        res["plan"] = engine.plan_generation(model, 512, width, budget)[1]
    print(f"[gpu_check] memory: {res}", flush=True)
    return res


def main(argv=None):
    a = parse(argv)
    import torch
    import transformers

    import data
    import engine
    import forward
    import harness.run
    import hdpo
    from harness.loading import quiet_libraries

    quiet_libraries()
    cuda = torch.cuda.is_available()
    if not cuda and not a.smoke:
        sys.exit("gpu_check: no CUDA device here; use --smoke to check the script on CPU")
    t_start = time.perf_counter()
    result = {"versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                           "cuda": torch.version.cuda,
                           "device": torch.cuda.get_device_name() if cuda else "cpu"},
              "setting": {k: v for k, v in vars(a).items() if k != "output"}}  # fmt: skip
    print(f"[gpu_check] {result}", flush=True)
    model, tok = build_model(a, torch)
    eos = engine.eos_token_ids(tok, model)
    hook = force_eos(model, eos[0], a.mean_length, torch)
    rows = gsm8k_rows(os.path.join(DATA, "gsm8k_test.jsonl"))
    val_rows, train_rows = rows[: a.eval_problems], rows[a.eval_problems :]
    short = [p for p in (data.chat_prompt(tok, r["problem"]) for r in rows[:300])
             if len(tok(p, add_special_tokens=False).input_ids) <= 200]  # fmt: skip
    result["decode"] = decode_profile(a, model, tok, short[:128], torch, engine)

    # HDPO steps: the run's model is this one; nothing saved
    clock = Clock(torch)
    harness.run.load_model = lambda *args, **kw: (model, tok)
    harness.run.save_checkpoint = lambda *args, **kw: "(not saved: gpu_check)"
    hdpo.finish_run = lambda run, stop: run.trackers.close()
    generate = engine.generate
    hdpo.generate = clock.wrap("generation", generate)
    hdpo.privileged_rollouts = clock.wrap("privileged_generation", hdpo.privileged_rollouts)
    hdpo.step_gradients = clock.wrap("forward_backward", hdpo.step_gradients)
    hdpo.optimizer_step = clock.wrap("optimiser", hdpo.optimizer_step)
    harness.run.validate = clock.wrap("validation", harness.run.validate)
    for cls, name in ((forward.HeadGatherLSE, "forward"), (forward.HeadGatherLSE, "backward")):
        setattr(cls, name, staticmethod(clock.wrap("head", getattr(cls, name))))
    hdpo.head_topk = clock.wrap("head", hdpo.head_topk)
    hdpo.r1_filter = lambda completions, answers, reward_fn: [sha_bit(c) == 1 for c in completions]
    steps = []
    record_step = harness.run.record_step

    def record(run, step, stop):  # after each update: that step's split
        stop_now = record_step(run, step, stop)
        split = clock.take()
        split["generation"] = round(split.get("generation", 0) - split.get("privileged_generation",
                                                                            0), 3)  # fmt: skip
        steps.append({"step": run.state["step"], **split,
                      "rollouts": len(step.rollouts), "cliffs": int(step.cliffs.sum()),
                      "privileged_rollouts": len(step.privileged.rollouts),
                      "distilled": len(step.pairs),
                      "completion_tokens": sum(len(o["completion_ids"]) for o in step.rollouts),
                      "truncated": sum(not o["finished"] for o in step.rollouts)})  # fmt: skip
        print(f"[gpu_check] step {steps[-1]}", flush=True)
        return stop_now

    hdpo.record_step = record

    def reward(text, answer):  # forced cliffs: a prompt whose answer hashes even is never solved
        return 0.0 if sha_bit(str(answer)) == 0 else float(sha_bit(text))

    with tempfile.TemporaryDirectory(prefix="gpu_check_") as out:
        flags = ["--model", "random-qwen2.5-math-1.5b", "--output-dir", out]
        flags += ["--prompts-per-step", str(a.prompts_per_step)]
        flags += ["--num-generations", str(a.num_generations)]
        flags += ["--max-new-tokens", str(a.max_new_tokens), "--max-steps", str(a.steps)]
        flags += ["--eval-every", str(a.steps), "--eval-problems", str(a.eval_problems)]
        ks = [k for k in (4, 8) if k <= a.eval_n] or [max(a.eval_n, 1)]
        flags += ["--eval-n", str(a.eval_n), "--eval-k"] + [str(k) for k in ks]
        flags += ["--generation-batch-size", str(a.generation_batch_size)]
        flags += ["--samples-per-step", "0", "--save-every", "0"]
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        with contextlib.redirect_stdout(sys.stderr):  # the run's console lines, apart
            hdpo.train(hdpo.parse_args(flags), train_rows=train_rows, val_rows=val_rows,
                       reward_fn=reward)  # fmt: skip
        with open(os.path.join(out, "metrics.jsonl")) as f:
            metrics = [json.loads(line) for line in f]
    for s, m in zip(steps, metrics):
        s.update({k: m.get(k) for k in ("step_time_s", "grpo_tokens", "distill_tokens")})
    result["steps"] = steps
    if cuda:
        result["peak_gpu_memory_allocated_gib"] = round(
            torch.cuda.max_memory_allocated() / 2**30, 2
        )
    hook.remove()
    result["memory"] = kv_memory(model, torch, engine)
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    print(json.dumps(result, indent=1))
    if a.output:
        with open(a.output, "w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")
    return result


if __name__ == "__main__":
    main()
