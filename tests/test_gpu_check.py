"""benchmarks/gpu_check.py --smoke: the prepared GPU check runs end to end (tiny sizes, CPU) and
reports every figure it promises. Run as a child process: the script replaces hdpo's model
loader and generate for its own run."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_check_smoke_runs_and_reports(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="2")
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "gpu_check.py"), "--smoke"]
    cmd += ["--tokenizer", os.path.join(ROOT, "tests", "data", "qwen2.5-math-1.5b")]
    cmd += ["--config", os.path.join(ROOT, "tests", "data", "qwen2.5-math-1.5b", "config.json")]
    cmd += ["--dataset", os.path.join(ROOT, "tests", "data", "gsm8k_test.jsonl")]
    cmd += ["--output", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert [s["step"] for s in r["steps"]] == [1, 2]
    # 2 steps of 2 prompts x 4 rollouts, then 4 problems x (1 greedy + 2 samples), 16 tokens each
    assert [c["sequences"] for c in r["generate_calls"]] == [8, 8, 4, 8]
    assert r["generation_tokens_per_s"] > 0 and r["validation_s"] >= 0
    assert all(s["training_tokens_per_s"] > 0 and s["train_tokens"] > 0 for s in r["steps"])
