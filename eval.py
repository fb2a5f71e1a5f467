"""Evaluate a causal LM on math problems: greedy accuracy (the paper's pass@1) and pass@k.

    python eval.py --model Qwen/Qwen2.5-Math-1.5B-Instruct --dataset HuggingFaceH4/MATH-500 --n 8
    python eval.py --model DIR --dataset tests/data/math500.jsonl --limit 16 --n 4 --k 1 4

Metrics (HDPO paper, "Evaluation"):
  greedy   accuracy of one greedy decode per problem (reported as pass@1 in the paper's table)
  pass@k   unbiased estimator 1 - C(n-c, k) / C(n, k) (Chen et al., 2021) from n samples per
           problem at temperature T (default 1.0), averaged over problems; c = correct samples of
           that problem. The sampled pass@1 (mean c/n) is a different number from `greedy`.

Scoring: verify.reward(response, answer), imported lazily. Generation: engine.generate (also
importable as eval.generate). hdpo.py validates through evaluate and summarize.
"""

import argparse
import json
import math
import operator
import os
import sys
import time
import warnings

from data import DataError, chat_prompt, load_problems
from engine import PromptTooLongError, generate, model_device
from harness.loading import ModelLoadError, load_model, one_line, quiet_libraries

__all__ = ["pass_at_k", "summarize", "evaluate", "generate", "main"]
DEFAULT_KS = (1, 4, 8)


# ----------------------------------------------------------------------------- pass@k


def pass_at_k(n, c, k):
    """Unbiased pass@k estimator 1 - C(n-c, k) / C(n, k) (Chen et al., 2021).

    n samples of which c are correct. Computed as 1 - prod_{j<k} (1 - c / (n - j)) in log space
    (log1p / expm1), which needs k terms, never forms a binomial coefficient, and stays within a few
    ulps relative of the exact rational value (tests check 1e-12 relative against math.comb for
    n up to 1,024).
    """
    n, c, k = operator.index(n), operator.index(c), operator.index(k)
    if k < 1:
        raise ValueError(f"pass_at_k: k must be >= 1, got k={k}")
    if n < k:
        raise ValueError(f"pass_at_k: need at least k samples per problem, got n={n} < k={k}")
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: correct count c={c} must be between 0 and n={n}")
    if c == 0:
        return 0.0
    if n - c < k:  # every k-subset contains a correct sample
        return 1.0
    log_fail = math.fsum(math.log1p(-c / (n - j)) for j in range(k))
    return -math.expm1(log_fail)


# ----------------------------------------------------------------------------- evaluation


def summarize(per_problem, ks, n):
    """Combine per-problem results [{"greedy_correct": bool | None, "correct": int}, ...] into
    {"greedy", "pass@K" for each K, "n_problems", "n_samples", "skipped_long_prompts"}. greedy is
    None when no problem has a greedy result; a k > n is left out (no pass@k without k samples).
    Problems marked "skipped" (prompt longer than max_seq_len) are counted, not scored. Problems
    can come from several ranks: concatenate their lists and call this once."""
    n_skipped = sum(bool(p.get("skipped")) for p in per_problem)
    per_problem = [p for p in per_problem if not p.get("skipped")]
    greedy_vals = [p["greedy_correct"] for p in per_problem if p.get("greedy_correct") is not None]
    out = {
        "greedy": (sum(bool(g) for g in greedy_vals) / len(greedy_vals)) if greedy_vals else None
    }
    for k in ks:
        if k > n:  # evaluate() already warned; n == 0 means greedy only
            continue
        vals = [pass_at_k(n, int(p["correct"]), k) for p in per_problem]
        out[f"pass@{k}"] = math.fsum(vals) / len(vals) if vals else None
    out["n_problems"] = len(per_problem)
    out["n_samples"] = n
    out["skipped_long_prompts"] = n_skipped
    return out


def _is_correct(reward_fn, response, answer):
    return float(reward_fn(response, answer)) >= 1.0


def evaluate(
    model,
    tokenizer,
    problems,
    answers,
    n=8,
    ks=DEFAULT_KS,
    temperature=1.0,
    max_new_tokens=4096,
    batch_size=64,
    max_seq_len=None,
    greedy=True,
    progress=True,
    generate_fn=None,
    reward_fn=None,
):
    """Greedy accuracy and pass@k of `model` on (problems, answers).

    One greedy decode per problem gives `greedy` (the paper's pass@1); n samples per problem at
    `temperature` give per-problem correct counts and pass@k for each k in ks (k > n is skipped with
    a warning; n == 0 gives greedy only). Returns summarize(...) plus "per_problem" (greedy_correct,
    correct per problem), "generated_tokens" and "generation_seconds". generate_fn (default:
    generate) and reward_fn (default: verify.reward) are the hooks tests use.
    """
    problems, answers = list(problems), [str(a) for a in answers]
    if len(problems) != len(answers):
        raise ValueError(f"evaluate: {len(problems)} problems but {len(answers)} answers")
    if n < 0:
        raise ValueError(f"evaluate: n must be >= 0, got {n}")
    generate_fn = generate_fn or generate
    if reward_fn is None:
        from verify import reward as reward_fn
    kept = []
    for k in ks if n > 0 else ():  # n == 0: greedy only
        if k > n:
            warnings.warn(
                f"pass@{k} needs at least {k} samples per problem but n={n}; skipping it",
                stacklevel=2,
            )
        elif k not in kept:
            kept.append(k)

    prompts = [chat_prompt(tokenizer, p) for p in problems]
    fits = [True] * len(prompts)  # a prompt with no room to generate is skipped and counted
    if max_seq_len is not None:
        fits = [
            len(tokenizer(p, add_special_tokens=False).input_ids) < max_seq_len for p in prompts
        ]
    all_problems = problems
    problems, answers, prompts = (
        [x for x, f in zip(xs, fits) if f] for xs in (problems, answers, prompts)
    )
    common = dict(
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        max_seq_len=max_seq_len,
        progress=progress,
    )
    tokens, seconds = 0, 0.0

    greedy_correct = [None] * len(problems)
    if greedy and problems:
        t0 = time.perf_counter()
        outs = generate_fn(
            model, tokenizer, prompts, num_samples=1, greedy=True, desc="greedy", **common
        )
        seconds += time.perf_counter() - t0
        tokens += sum(len(o.get("completion_ids", ())) for o in outs)
        greedy_correct = [_is_correct(reward_fn, o["text"], a) for o, a in zip(outs, answers)]

    correct = [0] * len(problems)
    if n > 0 and problems:
        t0 = time.perf_counter()
        outs = generate_fn(
            model,
            tokenizer,
            prompts,
            num_samples=n,
            temperature=temperature,
            greedy=False,
            desc=f"sample n={n}",
            **common,
        )
        seconds += time.perf_counter() - t0
        tokens += sum(len(o.get("completion_ids", ())) for o in outs)
        for j, o in enumerate(outs):
            correct[j // n] += _is_correct(reward_fn, o["text"], answers[j // n])

    scored = iter({"greedy_correct": g, "correct": c} for g, c in zip(greedy_correct, correct))
    skipped = {"greedy_correct": None, "correct": 0, "skipped": True}
    per_problem = [next(scored) if f else dict(skipped) for f in fits]  # one per input problem
    assert len(per_problem) == len(all_problems)
    result = summarize(per_problem, kept, n)
    result["per_problem"] = per_problem
    result["generated_tokens"] = tokens
    result["generation_seconds"] = seconds
    return result


# ----------------------------------------------------------------------------- CLI


def _int_at_least(lo):
    def parse(s):
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {s!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {v}")
        return v

    parse.__name__ = f"int>={lo}"
    return parse


def _positive_float(s):
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {s}")
    return v


def build_parser():
    p = argparse.ArgumentParser(
        prog="eval.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Errors in the input (missing model, bad dataset rows, empty dataset) print one "
        "line and exit 1; "
        "--debug shows the traceback.",
    )
    g = p.add_argument_group("model and data")
    g.add_argument("--model", required=True, help="local model folder or Hugging Face hub id")
    g.add_argument(
        "--dataset",
        required=True,
        help="hub id (nvidia/OpenMathInstruct-2, HuggingFaceH4/MATH-500, openai/gsm8k) "
        "or a local .jsonl / .json / .parquet file or folder",
    )
    g.add_argument(
        "--split",
        default=None,
        help="dataset split (hub: default train; MATH-500: test; ignored for a single local file)",
    )
    g.add_argument("--config", default=None, help="dataset config (openai/gsm8k: main by default)")
    g.add_argument(
        "--problem-key",
        default=None,
        help="column holding the problem (default: problem|question|prompt)",
    )
    g.add_argument(
        "--answer-key",
        default=None,
        help="column holding the answer (default: expected_answer|answer)",
    )
    g.add_argument(
        "--limit", type=_int_at_least(1), default=None, help="evaluate the first N problems only"
    )

    g = p.add_argument_group("sampling")
    g.add_argument(
        "--n",
        type=_int_at_least(0),
        default=8,
        help="samples per problem for pass@k (default 8; 0: greedy only)",
    )
    g.add_argument(
        "--k",
        type=_int_at_least(1),
        nargs="+",
        default=None,
        help="k values for pass@k (default 1 4 8, keeping those <= n; an explicit k > n is "
        "an error)",
    )
    g.add_argument(
        "--temperature",
        type=_positive_float,
        default=1.0,
        help="sampling temperature (default 1.0)",
    )
    g.add_argument(
        "--no-greedy", action="store_true", help="skip the greedy decode (greedy reported as null)"
    )
    g.add_argument("--max-new-tokens", type=_int_at_least(1), default=4096, help="default 4096")
    g.add_argument(
        "--max-seq-len",
        type=_int_at_least(2),
        default=None,
        help="cap on prompt + completion tokens; default: the model's max_position_embeddings "
        "(4096 for Qwen2.5-Math); longer prompts are skipped and counted",
    )
    g.add_argument(
        "--seed", type=int, default=42, help="seeds python, numpy and torch (default 42)"
    )

    g = p.add_argument_group("runtime")
    g.add_argument(
        "--batch-size",
        type=_int_at_least(1),
        default=None,
        help="sequences per generate() call (default: 64 on GPU, 32 on CPU)",
    )
    g.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    g.add_argument(
        "--dtype",
        default=None,
        choices=["bf16", "fp16", "fp32"],
        help="default: bf16 on cuda, fp32 on cpu",
    )
    g.add_argument("--output", default=None, help="write the results JSON here")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g.add_argument("--debug", action="store_true", help="show Python tracebacks on errors")
    return p


def _format_table(res, args, ks, batch_size):
    rows = [("greedy (pass@1)", res["greedy"])] + [(f"pass@{k}", res[f"pass@{k}"]) for k in ks]
    lines = [
        f"model    {args.model}",
        f"dataset  {args.dataset}   problems {res['n_problems']}   n {res['n_samples']}   T "
        f"{args.temperature}",
        f"{'metric':<16}{'value':>8}",
    ]
    lines += [f"{name:<16}{'-' if v is None else f'{v:.4f}':>8}" for name, v in rows]
    tps = res["tokens_per_second"]
    if res["skipped_long_prompts"]:
        lines.append(f"skipped {res['skipped_long_prompts']} problems: prompt too long to generate")
    lines.append(
        f"generation: {res['generated_tokens']} tokens in {res['generation_seconds']:.2f} s = "
        f"{tps:.1f} tokens/s (batch size {batch_size})"
    )
    return "\n".join(lines)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.k is None:
        ks = [k for k in DEFAULT_KS if k <= args.n]
    else:
        ks = list(dict.fromkeys(args.k))
        too_big = [k for k in ks if k > args.n]
        if too_big:
            parser.error(
                f"--k {' '.join(map(str, too_big))} needs at least that many samples per problem, "
                f"but --n is {args.n}"
            )
    quiet_libraries()
    try:
        problems = load_problems(
            args.dataset,
            split=args.split,
            config=args.config,
            problem_key=args.problem_key,
            answer_key=args.answer_key,
            limit=args.limit,
        )
        from transformers import set_seed

        model, tokenizer = load_model(args.model, device=args.device, dtype=args.dtype)
        batch_size = args.batch_size or (64 if model_device(model).type == "cuda" else 32)
        max_seq_len = args.max_seq_len or getattr(model.config, "max_position_embeddings", None)
        set_seed(args.seed)
        res = evaluate(
            model,
            tokenizer,
            [p["problem"] for p in problems],
            [p["answer"] for p in problems],
            n=args.n,
            ks=ks,
            temperature=args.temperature,
            max_new_tokens=args.max_new_tokens,
            batch_size=batch_size,
            max_seq_len=max_seq_len,
            greedy=not args.no_greedy,
            progress=not args.no_progress,
        )
    except (DataError, ModelLoadError, PromptTooLongError) as e:
        if args.debug:
            raise
        print(f"eval.py: error: {one_line(e)}", file=sys.stderr)
        return 1
    res["tokens_per_second"] = (
        res["generated_tokens"] / res["generation_seconds"] if res["generation_seconds"] else 0.0
    )
    out = {"greedy": res["greedy"]}
    out.update({f"pass@{k}": res[f"pass@{k}"] for k in ks})
    out.update(
        n_problems=res["n_problems"],
        n_samples=res["n_samples"],
        skipped_long_prompts=res["skipped_long_prompts"],
        max_seq_len=max_seq_len,
        model=args.model,
        dataset=args.dataset,
        split=args.split,
        temperature=args.temperature,
        max_new_tokens=args.max_new_tokens,
        batch_size=batch_size,
        seed=args.seed,
        device=str(model_device(model)),
        generated_tokens=res["generated_tokens"],
        generation_seconds=round(res["generation_seconds"], 3),
        tokens_per_second=round(res["tokens_per_second"], 2),
        per_problem=[dict(p, answer=q["answer"]) for p, q in zip(res["per_problem"], problems)],
    )
    print(_format_table(res, args, ks, batch_size))
    if args.output:
        d = os.path.dirname(os.path.abspath(args.output))
        os.makedirs(d, exist_ok=True)
        with open(args.output, "w") as f:
            json.dump(out, f, indent=2)
            f.write("\n")
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
