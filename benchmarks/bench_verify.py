"""Speed and agreement of verify.py against Hugging Face Math-Verify, same process, same cases.

    python benchmarks/bench_verify.py --json benchmarks/results/bench_verify.json

Workloads:
  - the 260 Math-Verify conformance cases (tests/data/math_verify_cases.json);
  - the 319 peer cases without `label_questionable` (tests/data/peer_cases.json: other graders'
    own test suites), with agreement and false positives per source repository;
  - the 500 MATH-500 reference solutions against their answers.
Our call is verify(pred, gold); Math-Verify's is verify(parse("\\boxed{gold}"), parse(pred)) with
its default settings. Each pass starts cold: our caches and sympy's cache are cleared first; the
time is the best of --repeat passes. --ours loads another verify.py (e.g. an older commit's) so
that before/after numbers come from the same script. Math-Verify is a benchmark-only dependency
(`pip install math-verify==0.9.0` in a side venv); without it only our numbers are printed.
"""

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
from collections import defaultdict

import sympy

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository root
DATA = os.path.join(HERE, "tests", "data")


def load_ours(path):
    spec = importlib.util.spec_from_file_location("verify_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def workloads():
    """name -> rows of (pred, gold, expected, source)."""
    with open(os.path.join(DATA, "math_verify_cases.json"), encoding="utf-8") as f:
        cases = [(c["pred"], c["gold"], c["expected"], c["source"]) for c in json.load(f)]
    with open(os.path.join(DATA, "peer_cases.json"), encoding="utf-8") as f:
        peer = [
            (c["pred"], c["gold"], c["expected"], c["source"].split(":")[0])
            for c in json.load(f)
            if "label_questionable" not in c
        ]
    with open(os.path.join(DATA, "math500.jsonl"), encoding="utf-8") as f:
        math500 = [(r["solution"], r["answer"], True, "math500") for r in map(json.loads, f)]
    return {
        f"math_verify_cases ({len(cases)})": cases,
        f"peer_cases unquestioned ({len(peer)})": peer,
        f"math500 solutions ({len(math500)})": math500,
    }


def clear_caches(ours):
    for fn in (ours._parsing, ours._fingerprint, ours._rel_set):
        fn.cache_clear()
    sympy.core.cache.clear_cache()


def run(name, fn, rows, repeat, ours):
    """Best of `repeat` cold passes: a dict of speed, agreement, false positives, per source."""
    best, got = float("inf"), []
    for _ in range(repeat):
        clear_caches(ours)
        t = time.perf_counter()
        got = [fn(pred, gold) for pred, gold, _, _ in rows]
        best = min(best, time.perf_counter() - t)
    per_source = defaultdict(lambda: [0, 0, 0])  # agree, total, false positives
    for g, (_, _, e, src) in zip(got, rows):
        s = per_source[src]
        s[0] += g == e
        s[1] += 1
        s[2] += bool(g and not e)
    agree = sum(s[0] for s in per_source.values())
    fps = sum(s[2] for s in per_source.values())
    n_false = sum(not e for *_, e, _ in rows)
    agree_false = sum(g == e for g, (_, _, e, _) in zip(got, rows) if not e)
    print(
        f"  {name:12s} {len(rows) / best:8.1f} verifications/s   agreement {agree}/{len(rows)}"
        f"   false positives {fps}   expected-false {agree_false}/{n_false}"
    )
    return {
        "per_second": round(len(rows) / best, 1),
        "seconds_best_pass": round(best, 4),
        "agreement": agree,
        "n": len(rows),
        "false_positives": fps,
        "expected_false_agreement": agree_false,
        "n_expected_false": n_false,
        "per_source": {
            k: dict(zip(("agree", "n", "false_positives"), v)) for k, v in per_source.items()
        },
    }


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--ours", default=os.path.join(HERE, "verify.py"), help="verify.py to load")
    ap.add_argument("--json", help="write the results to this JSON file (benchmarks/results/)")
    args = ap.parse_args()
    ours = load_ours(args.ours)
    try:
        from importlib.metadata import version

        import math_verify

        mv_version = version("math-verify")

        def mv(pred, gold):
            return math_verify.verify(
                math_verify.parse("\\boxed{" + gold + "}"), math_verify.parse(pred)
            )
    except ImportError:
        mv, mv_version = None, None
        print("math-verify is not installed: pip install math-verify  (only our numbers follow)")
    ours.verify("\\boxed{1}", "1")  # import-time warm-up of sympy's lazy modules, for both
    if mv:
        mv("\\boxed{1}", "1")
        print(f"math-verify {mv_version}, sympy {sympy.__version__}")
    results = {
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "ours": os.path.relpath(os.path.abspath(args.ours), HERE),
        "math_verify": mv_version,
        "sympy": sympy.__version__,
        "python": platform.python_version(),
        "repeat": args.repeat,
        "workloads": {},
    }
    for name, rows in workloads().items():
        print(name)
        entry = {"verify.py": run("verify.py", ours.verify, rows, args.repeat, ours)}
        if mv:
            entry["math-verify"] = run("math-verify", mv, rows, args.repeat, ours)
            ratio = entry["verify.py"]["per_second"] / entry["math-verify"]["per_second"]
            entry["ratio"] = round(ratio, 2)
            print(f"  ratio verify.py / math-verify: {ratio:.1f}x")
        results["workloads"][name] = entry
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1, sort_keys=False)
            f.write("\n")


if __name__ == "__main__":
    main()
