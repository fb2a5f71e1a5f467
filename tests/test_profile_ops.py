"""benchmarks/profile_ops.py runs end to end (on the tiny random Qwen2; its figures come from a
real model, see the README) and writes what it prints."""

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import profile_ops  # noqa: E402


def test_profile_ops_times_grpo_backward_and_lists_the_matmuls(tiny_qwen_dir, tmp_path, capsys):
    out = tmp_path / "ops.json"
    profile_ops.main(["--model", str(tiny_qwen_dir), "--repeats", "1", "--output", str(out),
                      "--micro-batch-tokens", "300", "--head-chunks", "64,128"])  # fmt: skip
    got = json.loads(out.read_text())
    assert len(got["times_s"]) == 1 and got["micro_batch_tokens"] == 300
    names = [name for name, _, _ in got["ops_self_s"]]
    assert "aten::mm" in names and got["self_total_s"] > 0
    assert got["saved_bytes_per_token"] > 0 and set(got["head"]["chunks_s"]) == {"64", "128"}
    assert "grpo_backward wall per repeat" in capsys.readouterr().out
