"""One prepared check for a GPU machine: hdpo.py at the paper's per-step scale, full model size.

    python benchmarks/gpu_check.py          # on the GPU machine: < 8 minutes on an H100/H200
    python benchmarks/gpu_check.py --smoke  # on CPU, tiny sizes, < 1 minute: does it run

What it runs: Qwen2.5-Math-1.5B's config (--config) with random weights (nothing to download)
and the real tokenizer (--tokenizer), hdpo.train for --steps 2 steps of the paper's 32 prompts x 16
rollouts at --max-new-tokens 1024, then one validation on --eval-problems 64 GSM8K problems (1
greedy + --eval-n 8 samples each) at the end of the last step. Random weights never emit EOS, so
every rollout runs to its cap: the worst case for generation. The reward is one bit of SHA-256 of
the completion, so about half the rollouts are rewarded and GRPO does real backward work (cliffs,
all 16 wrong, are then rare: the privileged rollouts are not exercised at scale here).

What it prints (and writes as JSON with --output):
  generation tokens/s   completion tokens / seconds inside engine.generate, per call (rollouts,
                        privileged rollouts, validation)
  training tokens/s     GRPO + distillation completion tokens / train_time_s of the step (the
                        loss forwards and backwards, the optimiser step and the statistics)
  step time             generation to update, per step (the last one includes the validation)
  peak GPU memory       torch.cuda.max_memory_allocated / max_memory_reserved
  bf16 fraction         6 x parameters x training tokens / train_time_s / the card's dense bf16
                        peak (--peak-tflops, or looked up from the device name): an estimate and
                        a lower bound, since train_time_s also holds the optimiser step and the
                        statistics, and the shared prompt's forward is not counted

--smoke: a 2-layer, 64-wide model of the same family, 2 prompts x 4 rollouts x 16 tokens, a
validation on 4 problems; on CPU when no GPU is present. It checks that the script runs, not speed.
"""

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SHARED = os.path.join(ROOT, "..", "shared", "data")

# dense bf16 tensor-core peak (TFLOP/s, no sparsity) by a substring of torch.cuda.get_device_name
BF16_PEAK_TFLOPS = {"H200": 989, "H100": 989, "H800": 989, "A100": 312, "A800": 312, "L40": 181,
                    "L4": 121, "A10": 125, "4090": 165, "3090": 71}  # fmt: skip


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=os.path.join(SHARED, "qwen2.5-math-1.5b", "config.json"))
    p.add_argument("--tokenizer", default=os.path.join(SHARED, "qwen2.5-math-1.5b"))
    p.add_argument("--dataset", default=os.path.join(SHARED, "gsm8k_test.jsonl"))
    p.add_argument("--prompts-per-step", type=int, default=32)
    p.add_argument("--num-generations", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=1024)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--eval-problems", type=int, default=64)
    p.add_argument("--eval-n", type=int, default=8)
    p.add_argument("--generation-batch-size", type=int, default=512, help="rows decoding together")
    p.add_argument("--peak-tflops", type=float, default=None, help="the card's dense bf16 peak")
    p.add_argument("--smoke", action="store_true", help="tiny sizes on CPU: does it run")
    p.add_argument("--output", default=None, help="write the results as JSON")
    a = p.parse_args(argv)
    if a.smoke:
        a.prompts_per_step, a.num_generations, a.max_new_tokens = 2, 4, 16
        a.steps, a.eval_problems, a.eval_n, a.generation_batch_size = 2, 4, 2, 8
    if not os.path.exists(a.dataset):  # the repository's own copy of the GSM8K test problems
        a.dataset = os.path.join(ROOT, "tests", "data", "gsm8k_test.jsonl")
    return a


def random_model_loader(a, torch):
    """A replacement for hdpo.load_model: the config's architecture with random weights (fp32,
    made on the device, so nothing is written to disk) and the real tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(os.path.dirname(os.path.abspath(a.config)))
    if a.smoke:
        config.update(dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16))  # fmt: skip
        config.layer_types = (
            config.layer_types[:2] if getattr(config, "layer_types", None) else None
        )

    def load(path, device=None, dtype=None):  # hdpo.load_model's signature; path is ignored
        tokenizer = AutoTokenizer.from_pretrained(a.tokenizer)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        torch.manual_seed(0)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(
                config, dtype=torch.float32, attn_implementation="sdpa"
            )
        load.parameters = sum(p.numel() for p in model.parameters())
        return model.eval(), tokenizer

    return load


def main(argv=None):
    a = parse(argv)
    import torch

    import data
    import engine
    import eval as E
    import harness.run
    import hdpo
    from harness.loading import quiet_libraries

    quiet_libraries()
    cuda = torch.cuda.is_available()
    if not cuda and not a.smoke:
        sys.exit("gpu_check: no CUDA device here; use --smoke to check the script on CPU")

    # count the completion tokens and the seconds of every engine.generate call
    calls = []
    real_generate = engine.generate

    def counted(*args, **kw):
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        outs = real_generate(*args, **kw)
        if cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t
        tokens = sum(len(o["completion_ids"]) for o in outs)
        calls.append({"desc": kw.get("desc", "generate"), "sequences": len(outs),
                      "tokens": tokens, "seconds": round(dt, 2),
                      "tokens_per_s": round(tokens / dt, 1)})  # fmt: skip
        print(f"[gpu_check] generate: {calls[-1]}", flush=True)
        return outs

    hdpo.generate = E.generate = counted
    harness.run.load_model = loader = random_model_loader(a, torch)  # setup_run's loader

    def reward(text, answer):  # one bit of SHA-256: about half the rollouts rewarded
        return float(hashlib.sha256(text.encode()).digest()[0] & 1)

    rows = data.load_problems(a.dataset)
    val_rows, train_rows = rows[: a.eval_problems], rows[a.eval_problems :]
    out = tempfile.mkdtemp(prefix="gpu_check_")
    flags = ["--model", "random:" + a.config, "--output-dir", out]
    flags += ["--prompts-per-step", str(a.prompts_per_step)]
    flags += ["--num-generations", str(a.num_generations)]
    flags += ["--max-new-tokens", str(a.max_new_tokens), "--max-steps", str(a.steps)]
    flags += ["--eval-every", str(a.steps), "--eval-problems", str(a.eval_problems)]
    ks = [k for k in (4, 8) if k <= a.eval_n] or [max(a.eval_n, 1)]  # pass@k needs k <= n
    flags += ["--eval-n", str(a.eval_n), "--eval-k"] + [str(k) for k in ks]
    flags += ["--generation-batch-size", str(a.generation_batch_size), "--samples-per-step", "0"]
    args = hdpo.parse_args(flags)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    hdpo.train(args, train_rows=train_rows, val_rows=val_rows, reward_fn=reward)
    wall = time.perf_counter() - t0

    metrics = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    n_params = loader.parameters
    device_name = torch.cuda.get_device_name() if cuda else "cpu"
    peak = a.peak_tflops or next((v for k, v in BF16_PEAK_TFLOPS.items() if k in device_name), None)
    steps = []
    for m in metrics:
        train_tokens = (m.get("grpo_tokens") or 0) + (m.get("distill_tokens") or 0)
        s = {k: m.get(k) for k in ("step", "step_time_s", "generation_time_s", "train_time_s")}
        s["train_tokens"] = train_tokens
        s["training_tokens_per_s"] = round(train_tokens / m["train_time_s"], 1)
        steps.append(s)
    for s in steps:
        if peak and n_params:
            flops = 6 * n_params * s["train_tokens"] / s["train_time_s"]
            s["bf16_peak_fraction_estimate"] = round(flops / (peak * 1e12), 3)
    gen, last = [c for c in calls if c["tokens"]], metrics[-1]  # the last step holds validation
    result = {
        "device": device_name,
        "setting": {k: v for k, v in vars(a).items() if k != "output"},
        "parameters": n_params,
        "bf16_peak_tflops": peak,
        "generate_calls": calls,
        "generation_tokens_per_s": round(
            sum(c["tokens"] for c in gen) / max(sum(c["seconds"] for c in gen), 1e-9), 1
        ),
        "steps": steps,
        "validation_s": round(
            last["step_time_s"] - last["generation_time_s"] - last["train_time_s"], 2
        ),
        "wall_s": round(wall, 1),
    }
    if cuda:
        result["peak_gpu_memory_allocated_gib"] = round(
            torch.cuda.max_memory_allocated() / 2**30, 2
        )
        result["peak_gpu_memory_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
    print(json.dumps(result, indent=1))
    if a.output:
        with open(a.output, "w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")
    return result


if __name__ == "__main__":
    main()
