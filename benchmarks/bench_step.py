"""Benchmark: one HDPO/GRPO step against TRL's GRPOTrainer on the same work, on this machine.

    python benchmarks/bench_step.py                  # full run (~12-15 min on 2 CPU cores)
    python benchmarks/bench_step.py --quick          # fewer repeats and steps, lengths 64, 256
    python benchmarks/bench_step.py --skip-trl       # without the TRL baseline
    python benchmarks/bench_step.py --trl-python /path/to/venv/bin/python  # TRL in another venv
    python benchmarks/bench_step.py --ab candidate.py  # also our steps with candidate.py applied

The setting (the issue's): a random-weight Qwen2 (hidden 64, 2 layers, tied embeddings) with the
real Qwen2.5 tokenizer and its 151,936-token vocabulary (offline.py), the first 4 MATH-500 prompts
(tests/data/math500.jsonl) x 8 rollouts x 64 new tokens per step, GRPO (λ = 0), temperature 1.0,
fp32, CPU.

Each method runs in its own subprocess, so its peak resident memory (VmHWM of that process, which
includes importing its libraries and loading the model) is its own:

  hf_generate   HF `generate` alone: the 32 rollouts x 64 tokens (min_new_tokens 64), dynamic cache
  naive         a naive fp32 step body: full-vocabulary logits and log-softmax over the full
                sequences (prompt + 64 completion tokens), micro-batches of 4, forward and backward
  trl           TRL GRPOTrainer: loss_type "dapo", beta 0, min_new_tokens 64, 32 completions
                generated in one call, micro-batches of 4 with 8 accumulation steps (one optimiser
                step per 32 rollouts, as ours)
  hdpo          our step, hdpo.train with λ = 0; median of step_time_s in its metrics.jsonl
                (warm-up steps dropped)
  hdpo_cliffs   our step with λ > 0 where every prompt is a cliff: every plain rollout gets reward
                0 and every privileged rollout reward 1, so each step distils all 4 prompts (4
                privileged rollouts each). All GRPO advantages are then 0, so this step has no GRPO
                backward: it generates 32 + 16 rollouts and runs the teacher top-k and the JSD
                backward on the 16 privileged ones
  memlen_<L>    peak memory of our loss passes (grpo_backward, then jsd_backward) on one
                micro-batch of 4 synthetic sequences with L completion tokens each (the real
                prompt, L random token ids); the rise of VmHWM above the resident set before the
                call (Linux clear_refs)
  genopts       generation options of transformers on this CPU: dynamic vs static cache,
                continuous batching (`generate_batch`), and eval.generate; greedy outputs compared

Times: wall (what the issue asks for) and the process's CPU time (user + system), which moves much
less than wall time when other processes share the machine (CPU time counts OpenMP threads
spinning while they wait). OMP_WAIT_POLICY is the environment's, as a user runs, unless
--omp-wait-policy sets it: PASSIVE saves CPU time on a shared machine but costs wall time
(our generation of this setting: 27.1 s under PASSIVE, 16.3 s by default). --rounds N runs the
step arms N times interleaved (trl, hdpo, ..., trl, hdpo, ...) so that a drift in the machine's
speed lands on both; the table then gives medians over rounds and each round's ratio. Peak RSS
is the process's VmHWM (Linux), read when the child ends (for our runs and TRL, also after every
step). The reward (both systems, identical): a random-weight model
never gets a verifier reward, so every group would have zero advantages and neither system would
do backward work. Instead reward = 1 bit of SHA-256 of the completion text: deterministic,
independent of the system, about half the rollouts rewarded, so the advantages are non-zero and
both systems run the full backward pass.

TRL is only in the optional benchmarks/requirements-bench.txt, never a runtime dependency.
"""

import argparse
import atexit
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository root
DATASETS = {"math500": "math500.jsonl", "gsm8k": "gsm8k_test.jsonl"}
RESULT_TAG = "BENCH_RESULT "


# ----------------------------------------------------------------------------------------------
# Shared by the children


def bench_reward(text, answer=None):
    """Deterministic pseudo-random 0/1 reward of a completion (its text only): the same for both
    systems."""
    return float(hashlib.sha256(text.encode("utf-8")).digest()[0] & 1)


def proc_status_kb(field):
    """VmHWM / VmRSS of this process in kB (Linux); ru_maxrss elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def reset_peak_rss():
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs). Returns True if it
    worked."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def load_rows(n, dataset="math500"):
    """The first n problems of tests/data's MATH-500 or GSM8K, as hdpo.train takes them."""
    from data import load_problems

    return load_problems(os.path.join(HERE, "tests", "data", DATASETS[dataset]), limit=n)


def scratch_dir(prefix):
    """A temporary folder for a child's outputs (metrics, its final checkpoint: ~2 GB at 135M
    parameters with the optimiser), removed when the child exits."""
    out = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    return out


def setup_torch(cfg):
    import torch

    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    return torch


def left_pad(tok_ids, pad_id):
    import torch

    width = max(len(x) for x in tok_ids)
    ids = torch.full((len(tok_ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(tok_ids), width), dtype=torch.long)
    for i, x in enumerate(tok_ids):
        ids[i, width - len(x) :] = torch.tensor(x)
        mask[i, width - len(x) :] = 1
    return ids, mask


def prompt_batch(tokenizer, cfg):
    """The step's 32 rollout prompts (4 problems x 8, prompt-major), tokenised as eval.generate
    does."""
    from eval import chat_prompt

    rows = load_rows(cfg["prompts"], cfg["dataset"])
    texts = [chat_prompt(tokenizer, r["problem"]) for r in rows]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return rows, texts, [x for x in ids for _ in range(cfg["generations"])]


def hf_gen_config(tokenizer, cfg, greedy=False, min_new=True, **extra):
    from transformers import GenerationConfig

    eos = tokenizer.eos_token_id
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    return GenerationConfig(
        do_sample=not greedy,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        max_new_tokens=cfg["new_tokens"],
        min_new_tokens=cfg["new_tokens"] if min_new and cfg["force_length"] else None,
        pad_token_id=tokenizer.pad_token_id or eos,
        eos_token_id=[eos, im_end],
        bos_token_id=None,
        **extra,
    )


def load(cfg):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(cfg["model"])
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(cfg["model"], dtype=torch.float32).eval()
    return model, tok


# ----------------------------------------------------------------------------------------------
# Children: each returns a dict; the peak RSS is added by child_main.


def child_hf_generate(cfg):
    torch = setup_torch(cfg)
    model, tok = load(cfg)
    _, _, ids = prompt_batch(tok, cfg)
    input_ids, mask = left_pad(ids, tok.pad_token_id)
    gc = hf_gen_config(tok, cfg)
    with torch.no_grad():
        model.generate(
            input_ids=input_ids,
            attention_mask=mask,
            generation_config=hf_gen_config(tok, dict(cfg, new_tokens=4)),
        )
        times, cpu = [], []
        for r in range(cfg["repeats"]):
            torch.manual_seed(r)
            t, c = time.perf_counter(), _cpu()
            out = model.generate(input_ids=input_ids, attention_mask=mask, generation_config=gc)
            times.append(time.perf_counter() - t)
            cpu.append(_cpu() - c)
    return {
        "times_s": times,
        "median_s": statistics.median(times),
        "cpu_median_s": statistics.median(cpu),
        "new_tokens": int(out.shape[0] * (out.shape[1] - input_ids.shape[1])),
    }


def child_naive(cfg):
    """Full-vocabulary fp32 logits over the full sequences (prompt + completion), log-softmax,
    gather, backward."""
    torch = setup_torch(cfg)
    model, tok = load(cfg)
    model.train()
    _, _, ids = prompt_batch(tok, cfg)
    g = torch.Generator().manual_seed(0)
    V = model.config.vocab_size
    seqs = [(p, torch.randint(0, V - 300, (cfg["new_tokens"],), generator=g).tolist()) for p in ids]
    adv = [1.0 if i % 2 else -1.0 for i in range(len(seqs))]
    n_tok = sum(len(c) for _, c in seqs)

    def one_pass(limit=None):
        for i in range(0, limit or len(seqs), cfg["micro_batch"]):
            mb = seqs[i : i + cfg["micro_batch"]]
            full = [p + c for p, c in mb]
            L = max(len(x) for x in full)
            input_ids = torch.full((len(mb), L), tok.pad_token_id, dtype=torch.long)
            attn = torch.zeros((len(mb), L), dtype=torch.long)
            cmask = torch.zeros((len(mb), L), dtype=torch.float32)
            for b, ((p, _c), x) in enumerate(zip(mb, full)):
                input_ids[b, : len(x)] = torch.tensor(x)
                attn[b, : len(x)] = 1
                cmask[b, len(p) : len(x)] = 1  # completion tokens (targets)
            logits = model(
                input_ids=input_ids, attention_mask=attn
            ).logits.float()  # [B, L, V] fp32, every position
            logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, input_ids[:, 1:, None])[
                ..., 0
            ]  # [B, L-1]
            a = torch.tensor(adv[i : i + len(mb)])[:, None]
            loss = -(logp * a * cmask[:, 1:]).sum() / n_tok
            loss.backward()

    one_pass(limit=cfg["micro_batch"])  # warm-up: one micro-batch
    times, cpu = [], []
    for _ in range(cfg["repeats"]):
        model.zero_grad(set_to_none=True)
        t, c = time.perf_counter(), _cpu()
        one_pass()
        times.append(time.perf_counter() - t)
        cpu.append(_cpu() - c)
    return {
        "times_s": times,
        "median_s": statistics.median(times),
        "cpu_median_s": statistics.median(cpu),
    }


def child_trl(cfg):
    setup_torch(cfg)
    import transformers
    import trl
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    model, tok = load(cfg)
    rows, texts, _ = prompt_batch(tok, cfg)
    ds = Dataset.from_list(
        [{"prompt": t} for t in texts]
    )  # already chat-formatted strings: identical prompts

    def reward(prompts, completions, **kw):
        return [bench_reward(c) for c in completions]

    ends, cpus, hwm = [], [], []

    class Timer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            ends.append(time.perf_counter())
            cpus.append(_cpu())

        def on_step_end(self, args, state, control, **kw):
            ends.append(time.perf_counter())
            cpus.append(_cpu())
            hwm.append(proc_status_kb("VmHWM") / 1024)

    G, P, mb = cfg["generations"], cfg["prompts"], cfg["micro_batch"]
    out = scratch_dir("bench_trl_")
    args = GRPOConfig(
        output_dir=out,
        per_device_train_batch_size=mb,
        gradient_accumulation_steps=P * G // mb,
        num_generations=G,
        max_completion_length=cfg["new_tokens"],
        generation_kwargs={"min_new_tokens": cfg["new_tokens"]} if cfg["force_length"] else None,
        loss_type="dapo",
        beta=0.0,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        learning_rate=1e-6,
        weight_decay=0.01,
        max_grad_norm=1.0,
        lr_scheduler_type="constant",
        max_steps=cfg["warmup_steps"] + cfg["trl_steps"],
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        fp16=False,
        seed=42,
        disable_tqdm=True,
        dataloader_num_workers=0,
        log_completions=False,
        shuffle_dataset=True,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[reward],
        args=args,
        train_dataset=ds,
        processing_class=tok,
        callbacks=[Timer()],
    )
    trainer.train()
    steps = [b - a for a, b in zip(ends, ends[1:])]
    measured = steps[cfg["warmup_steps"] :]
    step_cpu = [b - a for a, b in zip(cpus, cpus[1:])]
    logs = [h for h in trainer.state.log_history if "loss" in h]
    return {
        "step_times_s": steps,
        "median_s": statistics.median(measured),
        "trl_version": trl.__version__,
        "step_cpu_s": step_cpu,
        "cpu_median_s": statistics.median(step_cpu[cfg["warmup_steps"] :]),
        "peak_rss_after_step_mb": hwm,
        "transformers_version": transformers.__version__,
        "completion_len_mean": [h.get("completions/mean_length") for h in logs],
        "reward_mean": [h.get("reward") for h in logs],
        "config": {
            "per_device_train_batch_size": mb,
            "gradient_accumulation_steps": P * G // mb,
            "generation_batch_size": P * G,
            "loss_type": "dapo",
            "beta": 0.0,
            "min_new_tokens": cfg["new_tokens"] if cfg["force_length"] else None,
        },
    }


def _hdpo_args(cfg, out, distill_weight, extra=()):
    import hdpo

    argv = [
        "--model",
        cfg["model"],
        "--prompts-per-step",
        str(cfg["prompts"]),
        "--num-generations",
        str(cfg["generations"]),
        "--max-new-tokens",
        str(cfg["new_tokens"]),
        "--distill-weight",
        str(distill_weight),
        "--eval-every",
        "0",
        "--max-steps",
        str(cfg["warmup_steps"] + cfg["steps"]),
        "--output-dir",
        out,
        "--samples-per-step",
        "0",
        *cfg.get("hdpo_flags", []),
        *extra,
    ]
    return hdpo.parse_args(argv)


def _read_metrics(out, warmup):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        rows = [json.loads(ln) for ln in f if ln.strip()]
    m = rows[warmup:]
    med = lambda k: statistics.median(r[k] for r in m)
    return {
        "step_times_s": [r["step_time_s"] for r in rows],
        "median_s": med("step_time_s"),
        "generation_median_s": med("generation_time_s"),
        "train_median_s": med("train_time_s"),
        "reward_mean": [r["reward_mean"] for r in rows],
        "completion_len_mean": [r["completion_len_mean"] for r in rows],
        "num_cliffs": [r["num_cliffs"] for r in rows],
        "distill_sequences": [r["distill_sequences"] for r in rows],
        "distill_tokens": [r["distill_tokens"] for r in rows],
        "loss_jsd": [r["loss_jsd"] for r in rows],
    }


def _watch_steps():
    """Per step: process CPU time (user + system, all threads) and peak RSS so far, noted when
    hdpo.train writes the step's metrics row (right after step_time_s is taken)."""
    import harness.logs as plumbing  # log_step writes metrics.jsonl through append_jsonl

    seen = {"cpu": [], "hwm_mb": [], "t0": _cpu()}
    real = plumbing.append_jsonl

    def append_jsonl(path, row):
        if path.endswith("metrics.jsonl"):
            now = _cpu()
            seen["cpu"].append(now - seen["t0"])
            seen["t0"] = now
            seen["hwm_mb"].append(proc_status_kb("VmHWM") / 1024)
        return real(path, row)

    plumbing.append_jsonl = append_jsonl
    return seen


def _cpu():
    t = os.times()
    return t.user + t.system


def child_hdpo(cfg):
    setup_torch(cfg)
    import hdpo

    out = scratch_dir("bench_hdpo_")
    args = _hdpo_args(cfg, out, 0.0)
    seen = _watch_steps()
    rows = load_rows(cfg["prompts"], cfg["dataset"])
    hdpo.train(args, train_rows=rows, val_rows=[], reward_fn=bench_reward)
    return {
        **_read_metrics(out, cfg["warmup_steps"]),
        "step_cpu_s": seen["cpu"],
        "cpu_median_s": statistics.median(seen["cpu"][cfg["warmup_steps"] :]),
        "peak_rss_after_step_mb": seen["hwm_mb"],
    }


def child_hdpo_cliffs(cfg):
    """λ > 0, every prompt a cliff: plain rollouts get reward 0, privileged ones 1. The reward
    function only sees (text, answer), so hdpo.generate is wrapped to note the texts of privileged
    rollouts (their prompts carry the hint); nothing in hdpo.py changes."""
    setup_torch(cfg)
    import hdpo

    privileged_texts = set()
    real_generate = hdpo.generate

    def generate(model, tokenizer, prompts, **kw):
        outs = real_generate(model, tokenizer, prompts, **kw)
        if any("(Hint: the correct final answer is" in p for p in prompts):
            privileged_texts.update(o["text"] for o in outs)
        return outs

    hdpo.generate = generate
    reward = lambda text, answer: float(text in privileged_texts)
    out = scratch_dir("bench_hdpo_cliffs_")
    args = _hdpo_args(cfg, out, cfg["distill_weight"])
    seen = _watch_steps()
    rows = load_rows(cfg["prompts"], cfg["dataset"])
    hdpo.train(args, train_rows=rows, val_rows=[], reward_fn=reward)
    return {
        **_read_metrics(out, cfg["warmup_steps"]),
        "distill_weight": cfg["distill_weight"],
        "privileged_generations": args.privileged_generations,
        "step_cpu_s": seen["cpu"],
        "cpu_median_s": statistics.median(seen["cpu"][cfg["warmup_steps"] :]),
        "peak_rss_after_step_mb": seen["hwm_mb"],
    }


def child_memlen(cfg):
    """Peak memory of grpo_backward then jsd_backward on one micro-batch of 4 sequences with L
    completion tokens."""
    torch = setup_torch(cfg)
    import hdpo
    from eval import chat_prompt

    model, tok = load(cfg)
    model.train()
    L = cfg["length"]
    rows = load_rows(cfg["micro_batch"], cfg["dataset"])
    args = _hdpo_args(cfg, tempfile.mkdtemp(prefix="bench_memlen_"), 1.0)
    g = torch.Generator().manual_seed(0)
    V = model.config.vocab_size
    plain = [tok(chat_prompt(tok, r["problem"]), add_special_tokens=False).input_ids for r in rows]
    priv = [
        tok(
            chat_prompt(tok, hdpo.privileged_prompt(r["problem"], r["answer"])),
            add_special_tokens=False,
        ).input_ids
        for r in rows
    ]
    comps = [torch.randint(0, V - 300, (L,), generator=g).tolist() for _ in rows]
    seqs = list(zip(plain, comps))
    pairs = list(zip(plain, priv, comps))
    n = sum(len(c) for c in comps)
    # warm-up at a small length, so that one-off allocations (thread pools, autograd) are not
    # counted
    hdpo.grpo_backward(
        model,
        [(p, c[:8]) for p, c in seqs],
        [1.0, -1.0] * (len(seqs) // 2) + [1.0] * (len(seqs) % 2),
        32,
        args,
        "cpu",
    )
    model.zero_grad(
        set_to_none=False
    )  # the gradient buffers exist from here on, as in a training step
    res = {"length": L, "positions": n, "full_vocab_fp32_mb": n * V * 4 / 2**20}
    for name, fn in [
        (
            "grpo_backward",
            lambda: hdpo.grpo_backward(model, seqs, [1.0, -1.0] * (len(seqs) // 2), n, args, "cpu"),
        ),
        ("jsd_backward", lambda: hdpo.jsd_backward(model, model, pairs, n, args, "cpu")),
    ]:
        base = proc_status_kb("VmRSS")
        ok = reset_peak_rss()
        t = time.perf_counter()
        fn()
        res[name + "_s"] = time.perf_counter() - t
        res[name + "_peak_above_base_mb"] = (proc_status_kb("VmHWM") - base) / 1024 if ok else None
    res["clear_refs_works"] = ok
    return res


def child_genopts(cfg):
    """transformers' generation options on this CPU, same 32 x new_tokens work, plus
    eval.generate."""
    torch = setup_torch(cfg)
    import eval as ev

    model, tok = load(cfg)
    _, texts, ids = prompt_batch(tok, cfg)
    input_ids, mask = left_pad(ids, tok.pad_token_id)
    res = {}

    def timed(name, fn, repeats):
        fn(warm=True)
        ts, cpu = [], []
        for r in range(repeats):
            torch.manual_seed(r)
            t, c = time.perf_counter(), _cpu()
            fn(warm=False)
            ts.append(time.perf_counter() - t)
            cpu.append(_cpu() - c)
        res[name] = {
            "times_s": ts,
            "median_s": statistics.median(ts),
            "cpu_median_s": statistics.median(cpu),
        }

    n = cfg["new_tokens"]
    with torch.no_grad():
        for cache in ["dynamic", "static"]:

            def run(warm, cache=cache):
                c = dict(cfg, new_tokens=4 if warm else n)
                model.generate(
                    input_ids=input_ids,
                    attention_mask=mask,
                    generation_config=hf_gen_config(tok, c, cache_implementation=cache),
                )

            timed(f"hf_generate_{cache}", run, cfg["genopts_repeats"])
        try:
            from transformers import ContinuousBatchingConfig

            # its paged KV cache is sized from free memory by default (13.9 GB peak RSS measured
            # here): give it the
            # blocks this work needs (page 256 tokens)
            cb_cfg = ContinuousBatchingConfig(num_blocks=4 * len(ids))
        except Exception:  # noqa: BLE001 - older transformers
            cb_cfg = None
        try:

            def run_cb(warm):
                c = dict(cfg, new_tokens=4 if warm else n)
                model.generate_batch(
                    inputs=ids,
                    generation_config=hf_gen_config(tok, c),
                    progress_bar=False,
                    continuous_batching_config=cb_cfg,
                )

            timed("hf_generate_batch", run_cb, cfg["genopts_repeats"])
        except Exception as e:  # noqa: BLE001 - report, do not fail the benchmark
            res["hf_generate_batch"] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}

        def run_ours(warm):
            ev.generate(
                model,
                tok,
                texts,
                num_samples=cfg["generations"],
                max_new_tokens=4 if warm else n,
                batch_size=128,
            )

        timed("eval_generate", run_ours, cfg["genopts_repeats"])

        # exactness: greedy decodes (no sampling noise) must agree token for token
        k = cfg["exact_tokens"]
        uniq_ids, uniq_mask = left_pad(ids[:: cfg["generations"]], tok.pad_token_id)
        greedy = {}
        for cache in ["dynamic", "static"]:
            out = model.generate(
                input_ids=uniq_ids,
                attention_mask=uniq_mask,
                generation_config=hf_gen_config(
                    tok, dict(cfg, new_tokens=k), greedy=True, cache_implementation=cache
                ),
            )
            greedy[cache] = out[:, uniq_ids.shape[1] :].tolist()
        try:
            r = model.generate_batch(
                inputs=ids[:: cfg["generations"]],
                generation_config=hf_gen_config(tok, dict(cfg, new_tokens=k), greedy=True),
                progress_bar=False,
                continuous_batching_config=cb_cfg,
            )
            greedy["generate_batch"] = [list(v.generated_tokens) for v in r.values()]
        except Exception as e:  # noqa: BLE001
            greedy["generate_batch"] = f"error: {type(e).__name__}"
        eo = ev.generate(
            model, tok, texts, num_samples=1, max_new_tokens=k, greedy=True, batch_size=128
        )
        greedy["eval_generate"] = [o["completion_ids"] for o in eo]
        res["greedy_identical_to_dynamic"] = {
            name: v == greedy["dynamic"] for name, v in greedy.items() if name != "dynamic"
        }
        # sampled: same seed, dynamic vs static
        samp = {}
        for cache in ["dynamic", "static"]:
            torch.manual_seed(123)
            out = model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                generation_config=hf_gen_config(
                    tok, dict(cfg, new_tokens=k), cache_implementation=cache
                ),
            )
            samp[cache] = out[:, input_ids.shape[1] :].tolist()
        res["sampled_same_seed_static_equals_dynamic"] = samp["static"] == samp["dynamic"]
        if cfg.get(
            "ab"
        ):  # the candidate change's eval.generate, same work, and its greedy exactness
            try:
                import runpy

                runpy.run_path(cfg["ab"], run_name="bench_patch")
                timed("eval_generate+patch", run_ours, cfg["genopts_repeats"])
                eo = ev.generate(
                    model, tok, texts, num_samples=1, max_new_tokens=k, greedy=True, batch_size=128
                )
                res["greedy_identical_to_dynamic"]["eval_generate+patch"] = [
                    o["completion_ids"] for o in eo
                ] == greedy["dynamic"]
            except Exception as e:  # noqa: BLE001 - keep the measurements above
                res["eval_generate+patch"] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
    return res


CHILDREN = {
    "hf_generate": child_hf_generate,
    "naive": child_naive,
    "trl": child_trl,
    "hdpo": child_hdpo,
    "hdpo_cliffs": child_hdpo_cliffs,
    "memlen": child_memlen,
    "genopts": child_genopts,
}


OURS = ("hdpo", "hdpo_cliffs", "memlen")


def child_main(name, cfg):
    sys.path.insert(0, HERE)
    if (
        cfg.get("patch") and name in OURS
    ):  # --ab: a candidate change, applied before the measurement
        import runpy

        runpy.run_path(cfg["patch"], run_name="bench_patch")
    t = time.perf_counter()
    res = CHILDREN[name](cfg)
    res["peak_rss_mb"] = proc_status_kb("VmHWM") / 1024
    res["wall_s"] = time.perf_counter() - t
    sys.stdout.flush()
    print(RESULT_TAG + json.dumps(res), flush=True)


# ----------------------------------------------------------------------------------------------
# Parent


def run_child(name, cfg, python, timeout, log):
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        TRANSFORMERS_VERBOSITY="error",
        PYTHONWARNINGS="ignore",
    )
    # OMP_WAIT_POLICY as the user's environment has it unless --omp-wait-policy says otherwise.
    # PASSIVE (threads sleep between parallel regions) saves CPU time on a machine shared with
    # other work, but each of the ~80,000 small parallel regions of a decode then pays a wake-up:
    # our generation of the bench setting took 27.1 s under PASSIVE against 16.3 s by default.
    if cfg.get("omp_wait_policy"):
        env["OMP_WAIT_POLICY"] = cfg["omp_wait_policy"]
    label = (
        name
        + (f"[{cfg['length']}]" if name == "memlen" else "")
        + ("+patch" if cfg.get("patch") else "")
    )
    print(f"-- {label} ...", flush=True)
    t = time.perf_counter()
    try:
        p = subprocess.run(
            [python, os.path.abspath(__file__), "--child", name, "--cfg", json.dumps(cfg)],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=HERE,
            env=env,
        )
    except subprocess.TimeoutExpired:
        print(f"   {label}: timed out after {timeout} s", flush=True)
        return {"error": f"timed out after {timeout} s"}
    log.write(f"===== {label} (rc {p.returncode})\n{p.stdout}\n{p.stderr}\n")
    log.flush()
    for line in reversed(p.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            res = json.loads(line[len(RESULT_TAG) :])
            print(
                f"   {label}: done in {time.perf_counter() - t:.0f} s (peak RSS "
                f"{res['peak_rss_mb']:.0f} MB)",
                flush=True,
            )
            return res
    err = (p.stderr.strip().splitlines() or ["no output"])[-1]
    print(f"   {label}: FAILED (rc {p.returncode}): {err}", flush=True)
    return {"error": err, "returncode": p.returncode}


def merge_rounds(results):
    """One arm's child results over the rounds -> the first round's dict when there is one round;
    else medians over the rounds of each round's median step (wall, CPU, generation, the rest),
    the largest peak RSS, and every round's own result under "rounds"."""
    ok = [r for r in results if "median_s" in r]
    if len(results) == 1 or not ok:
        return results[0]
    out = dict(ok[0], rounds=results)
    for k in ["median_s", "cpu_median_s", "generation_median_s", "train_median_s"]:
        if all(k in r for r in ok):
            out[k] = statistics.median(r[k] for r in ok)
    out["peak_rss_mb"] = max(r["peak_rss_mb"] for r in ok)
    return out


def model_description(model_dir):
    """'<architecture>, vocab V, hidden H, L layers' from the folder's config.json."""
    with open(os.path.join(model_dir, "config.json")) as f:
        c = json.load(f)
    arch = (c.get("architectures") or [c.get("model_type", "?")])[0]
    return (
        f"{arch} {model_dir}, vocab {c['vocab_size']:,}, hidden {c['hidden_size']}, "
        f"{c['num_hidden_layers']} layers"
    )


def fmt(v, spec=".1f"):
    return "-" if v is None else format(v, spec)


def report(R, cfg):
    lines = []
    trl = R.get("trl") if "median_s" in R.get("trl", {}) else None
    lines.append(
        f"machine: {os.cpu_count()} CPU threads (torch threads {R['torch_threads']}), torch "
        f"{R['torch_version']}, "
        f"transformers {R['transformers_version']}"
        + (f", TRL {trl['trl_version']}" if trl else ", TRL not run")
    )
    lines.append(
        f"setting: {cfg['prompts']} prompts x {cfg['generations']} rollouts x {cfg['new_tokens']} "
        "new tokens, "
        f"{cfg['model_desc']}, {cfg['dataset']} prompts, fp32 CPU; wall = median wall time, "
        "CPU = median "
        "process CPU time"
    )
    lines.append("")
    lines.append(
        f"{'method':<40}{'wall (s)':>9}{'CPU (s)':>9}{'peak RSS (MB)':>15}{'wall/TRL':>10}"
        f"{'CPU/TRL':>9}{'RSS/TRL':>9}"
    )
    lam = cfg["distill_weight"]
    rows = [
        ("HF generate alone (32x64)", "hf_generate"),
        ("naive fp32 full-vocab fwd+bwd", "naive"),
        ("TRL GRPOTrainer step", "trl"),
        ("ours: hdpo step, λ=0", "hdpo"),
        ("ours + patch, λ=0", "hdpo+patch"),
        (f"ours: λ={lam}, every prompt a cliff", "hdpo_cliffs"),
        (f"ours + patch: λ={lam}, all cliffs", "hdpo_cliffs+patch"),
    ]
    for label, key in rows:
        r = R.get(key)
        if not r:
            continue
        if "error" in r:
            lines.append(f"{label:<40}  error: {r['error'][:80]}")
            continue
        ratio = lambda k, r=r: fmt(r[k] / trl[k], ".2f") if trl and r.get(k) and trl.get(k) else "-"
        lines.append(
            f"{label:<40}{r['median_s']:>9.2f}{fmt(r.get('cpu_median_s'), '.2f'):>9}"
            f"{r['peak_rss_mb']:>15.0f}"
            f"{ratio('median_s'):>10}{ratio('cpu_median_s'):>9}{ratio('peak_rss_mb'):>9}"
        )
    if R.get("hdpo_over_trl_by_round"):
        by_round = R["hdpo_over_trl_by_round"]
        ok = [x for x in by_round if x is not None]
        lines.append(
            "  ours/TRL wall, round by round: "
            + ", ".join(fmt(x, ".2f") for x in by_round)
            + (f" (median {statistics.median(ok):.2f})" if ok else "")
        )
    for suffix in ["", "+patch"]:
        h, c = R.get("hdpo" + suffix, {}), R.get("hdpo_cliffs" + suffix, {})
        tag = "ours" + suffix
        if "median_s" in h:
            lines.append(
                f"  {tag} λ=0: generation {h['generation_median_s']:.2f} s + "
                f"scoring/losses/update {h['train_median_s']:.2f} s (wall medians)"
            )
        if "median_s" in c and "median_s" in h:
            lines.append(
                f"  {tag} HDPO overhead, all {cfg['prompts']} prompts cliffs x "
                f"{c['privileged_generations']} privileged rollouts: "
                f"{c['median_s']:.2f} s vs {h['median_s']:.2f} s = "
                f"x{c['median_s'] / h['median_s']:.2f} wall, "
                f"x{c['cpu_median_s'] / h['cpu_median_s']:.2f} CPU (generation "
                f"{c['generation_median_s']:.2f} s, rest {c['train_median_s']:.2f} s)"
            )
    keys = sorted(
        (k for k in R if k.startswith("memlen_")),
        key=lambda k: (int(k.split("_")[1].split("+")[0]), k),
    )
    if keys:
        lines.append("")
        lines.append(
            "peak memory of our loss passes vs completion length (grpo_backward, then "
            "jsd_backward, on one micro-batch"
        )
        lines.append(
            f"of {cfg['micro_batch']} synthetic sequences; rise of the resident set above its "
            "level before the call):"
        )
        lines.append(
            f"{'variant':<8}{'new tokens':>11}{'positions':>10}{'GRPO (MB)':>11}{'JSD (MB)':>10}"
            f"{'GRPO (s)':>10}{'JSD (s)':>9}"
            f"{'process peak (MB)':>19}{'one [N,V] fp32 (MB)':>21}"
        )
        for k in keys:
            m = R[k]
            var = "patch" if k.endswith("+patch") else "current"
            if "error" in m:
                lines.append(f"{var:<8}  error: {m['error'][:80]}")
                continue
            lines.append(
                f"{var:<8}{m['length']:>11}{m['positions']:>10}"
                f"{fmt(m['grpo_backward_peak_above_base_mb'], '.0f'):>11}"
                f"{fmt(m['jsd_backward_peak_above_base_mb'], '.0f'):>10}"
                f"{m['grpo_backward_s']:>10.1f}{m['jsd_backward_s']:>9.1f}"
                f"{m['peak_rss_mb']:>19.0f}{m['full_vocab_fp32_mb']:>21.0f}"
            )
    g = R.get("genopts")
    if g and "error" not in g:
        lines.append("")
        lines.append(
            f"generation options (CPU, 32 x {cfg['new_tokens']} tokens, sampling; GPU not "
            "measured):"
        )
        for k in [
            "hf_generate_dynamic",
            "hf_generate_static",
            "hf_generate_batch",
            "eval_generate",
            "eval_generate+patch",
        ]:
            if k not in g:
                continue
            v = g.get(k, {})
            lines.append(
                f"  {k:<22} "
                + (
                    f"wall {v['median_s']:.2f} s, CPU {v['cpu_median_s']:.2f} s"
                    if "median_s" in v
                    else v.get("error", "-")
                )
            )
        lines.append(
            "  greedy outputs identical to the dynamic cache's: "
            f"{g.get('greedy_identical_to_dynamic')}"
        )
        lines.append(
            "  sampled with the same seed, static == dynamic: "
            f"{g.get('sampled_same_seed_static_equals_dynamic')}"
        )
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick", action="store_true", help="fewer repeats/steps, lengths 64 and 256 only"
    )
    p.add_argument("--skip-trl", action="store_true")
    p.add_argument(
        "--trl-python",
        default=None,
        help="python with trl installed (default: this one, else /work/venv-bench)",
    )
    p.add_argument(
        "--only",
        default=None,
        help="comma-separated subset of: hf_generate,naive,trl,hdpo,hdpo_cliffs,memlen,genopts",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="measured steps of our runs, after 1 warm-up step (default 3; quick 2)",
    )
    p.add_argument(
        "--trl-steps",
        type=int,
        default=None,
        help="measured TRL steps, after 1 warm-up step (default 2; quick 1)",
    )
    p.add_argument(
        "--lengths",
        type=int,
        nargs="+",
        default=None,
        help="completion lengths for the memory table",
    )
    p.add_argument("--distill-weight", type=float, default=0.1, help="λ of the all-cliffs run")
    p.add_argument(
        "--threads", type=int, default=0, help="torch threads in every child (0: torch's default)"
    )
    p.add_argument(
        "--model-dir",
        default=None,
        help="a real model folder (e.g. SmolLM2-135M-Instruct); default: build the tiny random "
        "Qwen2 with the real Qwen2.5 tokenizer",
    )
    p.add_argument("--dataset", choices=sorted(DATASETS), default="math500")
    p.add_argument(
        "--hdpo-flags",
        default="",
        help="extra hdpo.py flags for our runs, e.g. '--logit-chunk 256'",
    )
    p.add_argument(
        "--ab",
        default=None,
        metavar="PATCH.py",
        help="also run our steps and the memory table with this Python file executed first "
        "in the child "
        "(it may monkeypatch hdpo/eval): A/B a candidate change against the same baseline run",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the step arms (trl, hdpo, hdpo_cliffs) this many times, interleaved; the "
        "table reports the median over rounds of each round's median step",
    )
    p.add_argument(
        "--omp-wait-policy",
        default=None,
        choices=["PASSIVE", "ACTIVE"],
        help="OMP_WAIT_POLICY for every child (default: the environment's, as a user runs)",
    )
    p.add_argument("--output", default=os.path.join(HERE, "benchmarks", "bench_step_results.json"))
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--cfg", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        return child_main(a.child, json.loads(a.cfg))

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, HERE)
    import torch
    import transformers

    from harness.offline import build_random_qwen

    model_dir = a.model_dir or build_random_qwen(
        tempfile.mkdtemp(prefix="bench_model_"), hidden_size=64, num_layers=2
    )
    cfg = {
        "model": model_dir,
        "model_desc": model_description(model_dir),
        "prompts": 4,
        "generations": 8,
        "new_tokens": 64,
        "micro_batch": 4,
        "dataset": a.dataset,
        "force_length": a.model_dir is None,  # a random model: TRL also generates every token
        "threads": a.threads,
        "repeats": 1 if a.quick else 2,
        "steps": a.steps or (2 if a.quick else 3),
        "warmup_steps": 1,
        "trl_steps": a.trl_steps or (1 if a.quick else 2),
        "genopts_repeats": 1,
        "distill_weight": a.distill_weight,
        "exact_tokens": 16,
        "hdpo_flags": a.hdpo_flags.split(),
        "rounds": a.rounds,
        "omp_wait_policy": a.omp_wait_policy,
    }
    lengths = a.lengths or ([64, 256] if a.quick else [64, 256, 1024])
    only = (
        set(a.only.split(","))
        if a.only
        else {"hf_generate", "naive", "trl", "hdpo", "hdpo_cliffs", "memlen", "genopts"}
    )
    if a.skip_trl:
        only.discard("trl")
    trl_python = a.trl_python
    if "trl" in only and trl_python is None:
        for cand in [sys.executable, "/work/venv-bench/bin/python"]:
            if (
                os.path.exists(cand)
                and subprocess.run([cand, "-c", "import trl"], capture_output=True).returncode == 0
            ):
                trl_python = cand
                break
        if trl_python is None:
            print(
                "TRL is not installed (pip install -r benchmarks/requirements-bench.txt, or "
                "--trl-python); skipping it"
            )
            only.discard("trl")

    R = {
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "torch_threads": a.threads or torch.get_num_threads(),
        "config": cfg,
        "lengths": lengths,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    t0 = time.perf_counter()
    log_path = os.path.join(HERE, "runs", "bench_children.log")  # runs/ is git-ignored
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "w") as log:
        for name in ["hf_generate", "naive", "genopts"]:
            if name in only:
                c = dict(cfg, ab=os.path.abspath(a.ab)) if name == "genopts" and a.ab else cfg
                R[name] = run_child(name, c, sys.executable, 1800, log)
        # the step arms, interleaved over the rounds (trl, hdpo, ..., trl, hdpo, ...): a drift of
        # the machine's speed lands on every arm
        arms = [n for n in ["trl", "hdpo", "hdpo_cliffs"] if n in only]
        rounds = {n: [] for n in arms}
        for r in range(a.rounds):
            for name in arms:
                if a.rounds > 1:
                    print(f"round {r + 1}/{a.rounds}", end=" ", flush=True)
                python = trl_python if name == "trl" else sys.executable
                rounds[name].append(run_child(name, cfg, python, 1800, log))
        for name in arms:
            R[name] = merge_rounds(rounds[name])
        if "trl" in arms and "hdpo" in arms:
            R["hdpo_over_trl_by_round"] = [
                h["median_s"] / t["median_s"] if "median_s" in h and "median_s" in t else None
                for t, h in zip(rounds["trl"], rounds["hdpo"])
            ]
        if a.ab:
            for name in ["hdpo", "hdpo_cliffs"]:
                if name in only:
                    R[name + "+patch"] = run_child(
                        name, dict(cfg, patch=os.path.abspath(a.ab)), sys.executable, 1800, log
                    )
        if "memlen" in only:
            for L in lengths:
                R[f"memlen_{L}"] = run_child(
                    "memlen", dict(cfg, length=L), sys.executable, 1800, log
                )
                if a.ab:
                    R[f"memlen_{L}+patch"] = run_child(
                        "memlen",
                        dict(cfg, length=L, patch=os.path.abspath(a.ab)),
                        sys.executable,
                        1800,
                        log,
                    )
    R["total_wall_s"] = time.perf_counter() - t0
    table = report(R, cfg)
    R["table"] = table
    with open(a.output, "w") as f:
        json.dump(R, f, indent=2)
        f.write("\n")
    print()
    print(table)
    print(f"\nwrote {a.output} (children's output in {log_path}); {R['total_wall_s']:.0f} s in all")


if __name__ == "__main__":
    main()
