"""benchmarks/gpu_check.py --smoke: the prepared GPU check runs end to end (tiny sizes, CPU) where
the datasets package cannot be imported (the GPU machine's image has none), and reports every
part it promises. Run as a child process: the script replaces hdpo's loader and timers for its
own run."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# `import datasets` fails in the child (None in sys.modules), then the script runs as __main__
BLOCK_DATASETS = (
    "import runpy, sys; sys.modules['datasets'] = None; sys.argv = sys.argv[1:]; "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)


@pytest.mark.slow
def test_gpu_check_smoke_runs_without_datasets_and_reports(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    script = os.path.join(ROOT, "benchmarks", "gpu_check.py")
    cmd = [sys.executable, "-c", BLOCK_DATASETS, script, "--smoke", "--output", str(out)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list(tmp_path.iterdir()) == [out]  # nothing left behind but the JSON
    r = json.loads(out.read_text())
    assert set(r["versions"]) == {"torch", "transformers", "cuda", "device"}
    # the decode profile at both row counts (CPU: no graphs), the engine's host reads per step
    # (every step on CPU); its timing is not checked here (4 steps of a tiny model)
    for rows in (4, 8):
        d = r["decode"][f"{rows}_rows_eager"]
        assert d["engine_host_syncs_per_step"] == 1.0 and "ms_per_step" in d
    # 2 steps of 2 prompts x 4 rollouts: forced cliffs, so privileged generation and JSD ran
    steps = r["steps"]
    assert [s["step"] for s in steps] == [1, 2] and all(s["rollouts"] == 8 for s in steps)
    assert sum(s["cliffs"] for s in steps) > 0 and sum(s["distilled"] for s in steps) > 0
    assert sum(s["distill_tokens"] for s in steps) > 0
    for part in ("generation", "forward_backward", "head", "optimiser"):
        assert all(s[part] > 0 for s in steps), part
    assert "validation" in steps[-1]
    # forced EOS: ragged lengths, not every row to the cap of 16
    assert any(s["truncated"] < s["rollouts"] for s in steps)
    assert r["memory"]["kv_bytes_per_token_bf16"] > 0 and "512_rows_x_4096" in r["memory"]
