"""benchmarks/bench_step.py: the step arms over interleaved rounds are summarised by medians over
rounds, and the table gives each round's ratio to TRL (its figures come from a real model, see
the README; TRL is not a test requirement, so nothing here runs it)."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import bench_step  # noqa: E402


def arm(median, cpu, gen, rest, peak):
    return {"median_s": median, "cpu_median_s": cpu, "generation_median_s": gen,
            "train_median_s": rest, "peak_rss_mb": peak, "step_times_s": [median]}  # fmt: skip


def test_one_round_is_reported_as_it_ran():
    r = arm(40.0, 70.0, 16.0, 24.0, 4800.0)
    assert bench_step.merge_rounds([r]) is r


def test_rounds_give_medians_of_round_medians_and_the_largest_peak():
    rounds = [arm(40.0, 70.0, 16.0, 24.0, 4800.0), arm(52.0, 75.0, 20.0, 32.0, 4700.0),
              arm(44.0, 60.0, 17.0, 26.0, 4900.0)]  # fmt: skip
    got = bench_step.merge_rounds(rounds)
    assert got["median_s"] == 44.0 and got["cpu_median_s"] == 70.0
    assert got["generation_median_s"] == 17.0 and got["train_median_s"] == 26.0
    assert got["peak_rss_mb"] == 4900.0 and got["rounds"] == rounds


def test_a_failed_round_is_kept_but_not_counted():
    failed = {"error": "timed out after 1800 s"}
    got = bench_step.merge_rounds([failed, arm(40.0, 70.0, 16.0, 24.0, 4800.0),
                                   arm(50.0, 80.0, 18.0, 32.0, 4600.0)])  # fmt: skip
    assert got["median_s"] == 45.0 and got["peak_rss_mb"] == 4800.0
    assert got["rounds"][0] is failed


def test_the_table_gives_each_rounds_ratio_to_trl():
    cfg = {"prompts": 4, "generations": 8, "new_tokens": 64, "model_desc": "m", "dataset": "d",
           "distill_weight": 0.1, "micro_batch": 4}  # fmt: skip
    trl = dict(arm(100.0, 180.0, 0, 0, 3800.0), trl_version="x")
    R = {"torch_threads": 2, "torch_version": "t", "transformers_version": "v", "trl": trl,
         "hdpo": arm(40.0, 70.0, 16.0, 24.0, 4800.0),
         "hdpo_over_trl_by_round": [0.4, 0.35, None]}  # fmt: skip
    table = bench_step.report(R, cfg)
    assert "round by round: 0.40, 0.35, - (median 0.38)" in table
    row = next(ln for ln in table.splitlines() if ln.startswith("ours: hdpo step"))
    assert row.split()[-3] == "0.40"  # ours/TRL wall
