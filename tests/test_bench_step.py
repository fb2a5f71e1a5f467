"""benchmarks/bench_step.py: the arms over interleaved rounds are summarised by medians over
rounds, and the table gives each round's ratio to TRL (its figures come from a real model, see
benchmarks/README.md; TRL is not a test requirement, so nothing here runs it)."""

import os
import sys

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import bench_step  # noqa: E402


def arm(median, cpu, peak, gen=None, rest=None):
    r = {"median_s": median, "cpu_median_s": cpu, "peak_rss_mb": peak, "step_s": [median]}
    return r if gen is None else dict(r, generation_median_s=gen, train_median_s=rest)


def test_one_round_is_reported_as_it_ran():
    r = arm(40.0, 70.0, 4800.0)
    assert bench_step.merge_rounds([r]) is r


def test_rounds_give_medians_of_round_medians_and_the_largest_peak():
    rounds = [arm(40.0, 70.0, 4800.0, 16.0, 24.0), arm(52.0, 75.0, 4700.0, 20.0, 32.0),
              arm(44.0, 60.0, 4900.0, 17.0, 26.0)]  # fmt: skip
    got = bench_step.merge_rounds(rounds)
    assert got["median_s"] == 44.0 and got["cpu_median_s"] == 70.0
    assert got["generation_median_s"] == 17.0 and got["train_median_s"] == 26.0
    assert got["peak_rss_mb"] == 4900.0 and got["rounds"] == rounds


def test_a_failed_round_is_kept_but_not_counted():
    failed = {"error": "timed out after 1800 s"}
    got = bench_step.merge_rounds([failed, arm(40.0, 70.0, 4800.0), arm(50.0, 80.0, 4600.0)])
    assert got["median_s"] == 45.0 and got["peak_rss_mb"] == 4800.0
    assert got["rounds"][0] is failed


def test_the_table_gives_each_rounds_ratio_to_trl():
    rounds = [{"trl": arm(100.0, 180.0, 9000.0), "hdpo": arm(40.0, 70.0, 4500.0)},
              {"trl": arm(100.0, 180.0, 9000.0), "hdpo": arm(35.0, 70.0, 4500.0)},
              {"trl": {"error": "x"}, "hdpo": arm(30.0, 70.0, 4500.0)}]  # fmt: skip
    by_round = bench_step.ratios_by_round(rounds)
    assert by_round == [0.4, 0.35, None]
    R = {"arms": {"trl": arm(100.0, 180.0, 9000.0), "hdpo": arm(40.0, 70.0, 4500.0)},
         "hdpo_over_trl_by_round": by_round}  # fmt: skip
    text = bench_step.table(R)
    assert "round by round: 0.40, 0.35, - (median 0.38)" in text
    row = next(ln for ln in text.splitlines() if ln.startswith("hdpo"))
    assert row.split()[-3:] == ["0.40", "0.39", "0.50"]  # ours/TRL wall, CPU, peak RSS


def test_the_table_gives_each_steps_rollout_lengths_and_how_many_a_cap_cut():
    lengths, cut = [[10, 30, 64], [64, 64]], [1, 2]
    R = {"arms": {"hdpo": dict(arm(40.0, 70.0, 4500.0), rollout_lengths=lengths, rollouts_cut=cut)}}
    text = bench_step.table(R)
    assert "step 1: rollouts of 35 tokens on average, longest 64, 1 cut by a length cap" in text
    assert "step 2: rollouts of 64 tokens on average, longest 64, 2 cut by a length cap" in text
