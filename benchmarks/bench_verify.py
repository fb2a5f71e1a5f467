"""Speed of verify.py against Hugging Face Math-Verify, in the same process, on the same cases.

    python benchmarks/bench_verify.py [--repeat N]

Workloads: the 260 Math-Verify conformance cases (tests/data/math_verify_cases.json, our call
verify(pred, gold); Math-Verify's call verify(parse("\\boxed{gold}"), parse(pred)), its default
settings) and the 500 MATH-500 reference solutions against their answers. Each pass starts cold:
our caches and sympy's cache are cleared first. Math-Verify is a benchmark-only dependency
(`pip install math-verify`); without it only our numbers are printed.
"""
import argparse
import json
import os
import sys
import time

import sympy

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository root
sys.path.insert(0, HERE)
import verify as ours  # noqa: E402

DATA = os.path.join(HERE, "tests", "data")


def workloads():
    with open(os.path.join(DATA, "math_verify_cases.json"), encoding="utf-8") as f:
        cases = [(c["pred"], c["gold"], c["expected"]) for c in json.load(f)]
    with open(os.path.join(DATA, "math500.jsonl"), encoding="utf-8") as f:
        math500 = [(r["solution"], r["answer"], True) for r in map(json.loads, f)]
    return {"math_verify_cases (260)": cases, "math500 solutions (500)": math500}


def clear_caches():
    for fn in (ours._parsing, ours._fingerprint, ours._rel_set):
        fn.cache_clear()
    sympy.core.cache.clear_cache()


def run(name, fn, rows, repeat):
    """Best of `repeat` cold passes: (verifications per second, agreement with the labels)."""
    best, agree = float("inf"), 0
    for _ in range(repeat):
        clear_caches()
        t = time.perf_counter()
        got = [fn(pred, gold) for pred, gold, _ in rows]
        best = min(best, time.perf_counter() - t)
        agree = sum(g == e for g, (_, _, e) in zip(got, rows))
    print(f"  {name:12s} {len(rows) / best:8.1f} verifications/s   agreement {agree}/{len(rows)}")
    return len(rows) / best


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    try:
        import math_verify
        from importlib.metadata import version
        mv_version = version("math-verify")

        def mv(pred, gold):
            return math_verify.verify(math_verify.parse("\\boxed{" + gold + "}"), math_verify.parse(pred))
    except ImportError:
        mv = None
        print("math-verify is not installed: pip install math-verify  (only our numbers follow)")
    ours.verify("\\boxed{1}", "1")  # import-time warm-up of sympy's lazy modules, for both
    if mv:
        mv("\\boxed{1}", "1")
        print(f"math-verify {mv_version}, sympy {sympy.__version__}")
    for name, rows in workloads().items():
        print(name)
        a = run("verify.py", ours.verify, rows, args.repeat)
        if mv:
            b = run("math-verify", mv, rows, args.repeat)
            print(f"  ratio verify.py / math-verify: {a / b:.1f}x")


if __name__ == "__main__":
    main()
