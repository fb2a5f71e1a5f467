"""Which operations a step's GRPO forward/backward spends its time in, on a real model.

    python benchmarks/profile_ops.py --model DIR [--micro-batch-tokens N] [--logit-chunk N]

DIR: a real model folder, e.g. SmolLM2-135M-Instruct from `python ../shared/tools/make_smollm2.py
DIR`. Builds the rollouts of one step of bench_step.py's setting without generating them: 4 GSM8K
prompts (tests/data/gsm8k_test.jsonl) in the model's chat template x 8 completions of 64 random
token ids, advantages ±1, then runs hdpo.grpo_backward (the forward over packed micro-batches with
shared prompts, the chunked lm_head, the backward) --repeats times and once more under
torch.profiler. Prints the wall time of each repeat, the resident-set peak, the operations by
self CPU time, and the bytes autograd saves for backward per token of one group's micro-batch
(its prompt and 8 completions; unique storages, the parameters not counted). With --head-chunks
128,256,...: the chunked lm_head's forward and backward (forward.HeadGatherLSE) over 1,024
positions at the model's H and V, per chunk size, and a 2,048 x H x 4H fp32 matmul's rate for
scale. --output writes the same as JSON. keep_freed_memory() is applied, as hdpo.train
does on CPU.
"""

import argparse
import json
import os
import random
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
from torch.profiler import profile  # noqa: E402

import hdpo  # noqa: E402
from data import load_problems  # noqa: E402
from plumbing import keep_freed_memory, load_model  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", required=True, help="a real model folder (SmolLM2-135M-Instruct)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats before the profiled one")
    p.add_argument("--output", default=None, help="write the figures as JSON")
    p.add_argument("--head-chunks", default="", help="e.g. 128,256,512: time the head per chunk")
    a, rest = p.parse_known_args(argv)  # the rest are hdpo.py flags (--micro-batch-tokens, ...)
    args = hdpo.parse_args(["--model", a.model, *rest])
    keep_freed_memory()
    model, tok = load_model(a.model, device=torch.device("cpu"), dtype=torch.float32)
    model.train()
    rows = load_problems(os.path.join(ROOT, "tests", "data", "gsm8k_test.jsonl"), limit=4)
    prompts = [hdpo.chat_prompt(tok, r["problem"]) for r in rows]
    ids = [tok(x, add_special_tokens=False)["input_ids"] for x in prompts]
    rng = random.Random(0)
    seqs = [(ids[i // 8], [rng.randrange(1000, 40000) for _ in range(64)]) for i in range(32)]
    adv = [rng.choice([-1.0, 1.0]) for _ in seqs]
    n = sum(len(c) for _, c in seqs)

    def once():
        model.zero_grad(set_to_none=True)
        t = time.perf_counter()
        hdpo.grpo_backward(model, seqs, adv, n, args, torch.device("cpu"))
        return time.perf_counter() - t

    times = [round(once(), 2) for _ in range(a.repeats)]
    with profile() as prof:
        once()
    ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in ops)
    with open("/proc/self/status") as f:
        hwm = next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:")) / 1024
    saved_per_token = saved_bytes_per_token(model, ids[0], [c for _, c in seqs[:8]])  # after
    print(f"prompt tokens {[len(i) for i in ids]}, completion tokens {n}, "
          f"--micro-batch-tokens {args.micro_batch_tokens}, --logit-chunk {args.logit_chunk}, "
          f"torch threads {torch.get_num_threads()}")  # fmt: skip
    print(f"grpo_backward wall per repeat (s): {times}; peak RSS {hwm:.0f} MB; saved for backward "
          f"{saved_per_token / 2**20:.2f} MiB per token")  # fmt: skip
    top = [(e.key, e.self_cpu_time_total / 1e6, e.count) for e in ops[:15]]
    for name, s, count in top:
        print(f"  {name[:60]:60s} {s:8.3f} s {100 * s * 1e6 / total:5.1f}%  {count:6d} calls")
    heads = time_head_chunks(model, [int(c) for c in a.head_chunks.split(",") if c])
    for chunk, t in heads.get("chunks_s", {}).items():
        print(f"  lm_head fwd+bwd, 1,024 positions, chunk {chunk}: {t:.3f} s (best of 3)")
    if heads:
        print(f"  fp32 matmul 2,048 x H x 4H: {heads['matmul_gflops']:.0f} GFLOP/s")
    if a.output:
        with open(a.output, "w") as f:
            row = {"times_s": times, "peak_rss_mb": hwm, "head": heads}
            row.update(micro_batch_tokens=args.micro_batch_tokens, logit_chunk=args.logit_chunk)
            row.update(ops_self_s=top, self_total_s=total / 1e6)
            json.dump(dict(row, saved_bytes_per_token=saved_per_token), f, indent=1)


def time_head_chunks(model, chunks, n=1024, repeats=3):
    """Best-of-3 wall time of HeadGatherLSE forward + backward over n random positions, per chunk
    size, at the model's lm_head shape; and a large fp32 matmul's GFLOP/s."""
    if not chunks:
        return {}
    from forward import HeadGatherLSE

    V, H = model.get_output_embeddings().weight.shape
    w = torch.randn(V, H, requires_grad=True)
    h = (0.1 * torch.randn(n, H)).requires_grad_()
    idx = torch.randint(0, V, (n, 1))
    out = {"vocab": V, "hidden": H, "positions": n, "chunks_s": {}}
    for chunk in chunks:
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            g, lse = HeadGatherLSE.apply(h, w, None, idx, chunk)
            (g[:, 0] - lse).sum().backward()
            best = min(best, time.perf_counter() - t)
        out["chunks_s"][chunk] = round(best, 3)
    x, y = torch.randn(2048, H), torch.randn(H, 4 * H)
    x @ y
    t, reps = time.perf_counter(), 10
    for _ in range(reps):
        x @ y
    out["matmul_gflops"] = 2 * 2048 * H * 4 * H * reps / (time.perf_counter() - t) / 1e9
    return out


def saved_bytes_per_token(model, prompt, completions):
    """Bytes autograd keeps for backward (unique storages, parameters excluded) in the forward of
    one micro-batch: a prompt and its completions, shared-prompt forward and chunked head."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        owner = [0] * len(completions)
        hidden, targets = hdpo.completion_hidden(model, [prompt], completions, owner, "cpu")
        hdpo.head_gather_lse(hidden, model.get_output_embeddings(), targets[:, None])
    return sum(seen.values()) / (len(prompt) + sum(len(c) for c in completions))


if __name__ == "__main__":
    main()
