"""Issue 8: checkpoints, exact resume, the non-finite guard, signals and clear failures
(hdpo.py)."""

import glob
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import types

import pytest
import torch
from conftest import DATA, DEMO_ARGS, ROOT, hash_reward, rows, shorten_demo, train_args

import harness.logs
import hdpo
from harness.checkpoint import find_checkpoint
from harness.run import TrainingError

SAMPLE = os.path.join(DATA, "openmathinstruct2_sample.jsonl")
P, G = 2, 2  # prompts per step, rollouts per prompt
# Every run here: frozen teacher (so checkpoints carry one), distillation on, warm-up across the
# resume point.
COMMON = (
    "--prompts-per-step",
    str(P),
    "--num-generations",
    str(G),
    "--distill-weight",
    "1.0",
    "--teacher",
    "frozen",
    "--privileged-generations",
    "2",
    "--warmup-steps",
    "3",
)


def args_for(model_dir, out, *extra):
    return train_args(model_dir, out, *COMMON, *extra)


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(ln) for ln in f if ln.strip()]


def untimed(row):
    """A metrics row without its wall-clock fields, the only ones a resumed run may change."""
    return {k: v for k, v in row.items() if not k.endswith("_time_s")}


def same(a, b):
    """Row equality where NaN == NaN (skipped steps log NaN losses)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def state_dict(folder):
    from harness.loading import load_model

    return load_model(folder, device="cpu", dtype=torch.float32)[0].state_dict()


def checkpoints(out):
    return sorted(os.listdir(os.path.join(out, "checkpoints")))


def fresh_process_rng():
    """A resumed run starts in a new process: whatever the global RNGs hold must not matter (the
    checkpoint's RNG state must be restored), so never let a resume inherit the previous in-process
    run's RNG state."""
    import random

    import numpy as np

    random.seed(12345), np.random.seed(12345), torch.manual_seed(12345)


def leftovers(out):
    return glob.glob(os.path.join(str(out), "**", "*.tmp"), recursive=True)


# ---------------------------------------------------------------- exact resume


@pytest.fixture(scope="module")
def straight(tiny_qwen_dir, tmp_path_factory):
    """4 steps, uninterrupted."""
    out = tmp_path_factory.mktemp("straight")
    hdpo.train(
        args_for(tiny_qwen_dir, out, "--max-steps", "4"),
        train_rows=rows(),
        val_rows=[],
        reward_fn=hash_reward,
    )
    return out


@pytest.fixture(scope="module")
def resumed(tiny_qwen_dir, tmp_path_factory):
    """2 steps (--save-every 3: only the end-of-run checkpoint), then --resume --max-steps 4 into
    the same folder, keeping 2 checkpoints. Returns the folder and what it held between the two
    runs."""
    out = tmp_path_factory.mktemp("resumed")
    flags = ("--save-every", "3", "--keep-checkpoints", "2")
    first = hdpo.train(
        args_for(tiny_qwen_dir, out, "--max-steps", "2", *flags),
        train_rows=rows(),
        val_rows=[],
        reward_fn=hash_reward,
    )
    ckpt = os.path.join(out, "checkpoints", "step-000002")
    between = {
        "summary": first,
        "checkpoints": checkpoints(out),
        "metrics": read_jsonl(out / "metrics.jsonl"),
        "files": sorted(
            os.path.relpath(p, ckpt) for p in glob.glob(os.path.join(ckpt, "**"), recursive=True)
        ),
        "trainer": torch.load(os.path.join(ckpt, "trainer.pt"), weights_only=True),
        "rng": torch.load(os.path.join(ckpt, "rng-0.pt"), weights_only=True),
    }
    fresh_process_rng()
    second = hdpo.train(
        args_for(tiny_qwen_dir, out, "--max-steps", "4", "--resume", *flags),
        train_rows=rows(),
        val_rows=[],
        reward_fn=hash_reward,
    )
    return out, between, second


def test_end_of_run_checkpoint_holds_everything_a_resume_needs(resumed):
    out, between, _ = resumed
    assert between["summary"]["steps"] == 2 and not between["summary"]["interrupted"]
    assert between["checkpoints"] == [
        "step-000002"
    ]  # --save-every 3 never fired: the end-of-run checkpoint
    assert [r["step"] for r in between["metrics"]] == [1, 2]
    files = between["files"]
    assert "trainer.pt" in files and "rng-0.pt" in files
    assert any(f.startswith("model/") and f.endswith(".safetensors") for f in files)
    assert any(
        f.startswith("model/tokenizer") for f in files
    )  # the tokenizer travels with the model
    assert any(
        f.startswith("teacher/") and f.endswith(".safetensors") for f in files
    )  # the frozen teacher
    t = between["trainer"]
    assert (
        t["step"] == 2
        and t["data_pos"] == 2 * P
        and t["skipped_steps"] == 0
        and t["bad_steps"] == 0
    )
    assert (
        t["optimizer"]["state"] and t["scheduler"]["last_epoch"] == 2
    )  # AdamW moments, warm-up position
    assert set(between["rng"]) >= {"python", "numpy", "torch"}


def test_resume_continues_exactly_like_an_uninterrupted_run(straight, resumed):
    """Steps 3-4 after --resume equal steps 3-4 of the straight run: rewards, losses, grad norms,
    lr, every logged field except timings; the same completions; the same final weights.
    metrics.jsonl has each step once."""
    out, _, second = resumed
    want, got = read_jsonl(straight / "metrics.jsonl"), read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in got] == [1, 2, 3, 4] and second["steps"] == 4
    assert [r["lr"] for r in want] == pytest.approx(
        [1e-4, 4e-4, 7e-4, 1e-3]
    )  # warm-up crosses the resume point
    assert all(r["grad_norm"] > 0 for r in want[2:]), "the test needs updates in steps 3-4"
    assert sum(r["distill_sequences"] for r in want) > 0, "the test needs some distillation"
    for w, g in zip(want, got):
        assert untimed(g) == untimed(w), w["step"]
    assert read_jsonl(out / "samples.jsonl") == read_jsonl(straight / "samples.jsonl")
    a, b = state_dict(str(straight / "final")), state_dict(str(out / "final"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# Re-injection (issue 15): the queue of distilled cliff prompts is trainer state. Delay 2, at most
# one a step: the checkpoint at step 2 holds the prompts distilled at steps 1 and 2, and steps 3-4
# re-inject from it.
REINJECT = ("--reinject-delay", "2", "--reinject-max", "1")


@pytest.fixture(scope="module")
def reinject_runs(tiny_qwen_dir, tmp_path_factory):
    """The straight and resumed runs above, with re-injection on. -> (straight folder, resumed
    folder, the resumed folder's trainer.pt at step 2)."""
    straight = tmp_path_factory.mktemp("straight_reinject")
    train = lambda out, *flags: hdpo.train(
        args_for(tiny_qwen_dir, out, *REINJECT, *flags),
        train_rows=rows(),
        val_rows=[],
        reward_fn=hash_reward,
    )
    train(straight, "--max-steps", "4")
    out = tmp_path_factory.mktemp("resumed_reinject")
    train(out, "--max-steps", "2")
    ckpt = os.path.join(out, "checkpoints", "step-000002")
    between = torch.load(os.path.join(ckpt, "trainer.pt"), weights_only=True)
    fresh_process_rng()
    train(out, "--max-steps", "4", "--resume")
    return straight, out, between


def test_resume_with_a_non_empty_reinject_queue_continues_exactly(reinject_runs):
    """A checkpoint taken with prompts waiting in the re-injection queue: the resumed steps
    re-inject the same prompts and equal the uninterrupted run's in every logged field but
    timings, the same completions, the same queue and stream position, the same final weights."""
    straight, out, between = reinject_runs
    assert between["reinject_queue"], "the test needs a non-empty queue at the checkpoint"
    assert all(s <= 2 for s, _ in between["reinject_queue"])
    want, got = read_jsonl(straight / "metrics.jsonl"), read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in got] == [1, 2, 3, 4]
    assert sum(r["reinjected"] for r in want[2:]) > 0, "the test needs re-injection after resume"
    assert between["data_pos"] == 2 * P  # nothing due before step 3: two full fresh batches
    for w, g in zip(want, got):
        assert untimed(g) == untimed(w), w["step"]
    assert read_jsonl(out / "samples.jsonl") == read_jsonl(straight / "samples.jsonl")
    ends = [torch.load(os.path.join(d, "checkpoints", "step-000004", "trainer.pt"),
                       weights_only=True) for d in (straight, out)]  # fmt: skip
    assert ends[0]["reinject_queue"] == ends[1]["reinject_queue"]
    assert ends[0]["data_pos"] == ends[1]["data_pos"] < 4 * P  # re-injected prompts replaced fresh
    a, b = state_dict(str(straight / "final")), state_dict(str(out / "final"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_keep_checkpoints_prunes_old_ones_and_leaves_no_tmp_folder(resumed):
    out, _, _ = resumed
    assert checkpoints(out) == [
        "step-000003",
        "step-000004",
    ]  # --save-every 3, the end of the run; keep 2
    assert not leftovers(out)


def test_resume_from_an_older_checkpoint_path_drops_the_later_log_rows(
    straight, resumed, tmp_path, tiny_qwen_dir
):
    """--resume PATH (not the latest): rows after that checkpoint's step are dropped, then rewritten
    identically."""
    src, _, _ = resumed
    out = tmp_path / "again"
    shutil.copytree(src, out)
    ckpt = str(out / "checkpoints" / "step-000003")
    fresh_process_rng()
    hdpo.train(
        args_for(tiny_qwen_dir, out, "--max-steps", "4", "--resume", ckpt),
        train_rows=rows(),
        val_rows=[],
        reward_fn=hash_reward,
    )
    got, want = read_jsonl(out / "metrics.jsonl"), read_jsonl(straight / "metrics.jsonl")
    assert [r["step"] for r in got] == [1, 2, 3, 4]
    assert untimed(got[3]) == untimed(want[3])


def test_resume_from_an_older_checkpoint_discards_the_later_ones(resumed, tmp_path, tiny_qwen_dir):
    """--resume PATH at step 3 drops metrics rows after step 3, so the folder's step-4 checkpoint
    now belongs to an abandoned continuation: it must go too, or a later plain --resume picks it up
    and metrics.jsonl skips step 4."""
    src, _, _ = resumed
    out = tmp_path / "again"
    shutil.copytree(src, out)
    ckpt = str(out / "checkpoints" / "step-000003")
    hdpo.train(
        args_for(tiny_qwen_dir, out, "--max-steps", "3", "--resume", ckpt),
        train_rows=rows(),
        val_rows=[],
        reward_fn=hash_reward,
    )
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3]
    assert checkpoints(out) == ["step-000003"], (
        "a checkpoint later than the one resumed from survived"
    )
    fresh_process_rng()
    hdpo.train(
        args_for(tiny_qwen_dir, out, "--max-steps", "4", "--resume"),
        train_rows=rows(),
        val_rows=[],
        reward_fn=hash_reward,
    )
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3, 4]


def test_resume_with_nothing_to_resume_is_a_clear_error(tiny_qwen_dir, tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="not a checkpoint"):
        hdpo.train(
            args_for(tiny_qwen_dir, tmp_path, "--resume", str(tmp_path)),
            train_rows=rows(),
            val_rows=[],
            reward_fn=hash_reward,
        )
    with pytest.raises(SystemExit) as e:  # the CLI: one line, exit 1
        hdpo.main(
            [
                "--model",
                tiny_qwen_dir,
                "--dataset",
                SAMPLE,
                "--output-dir",
                str(tmp_path),
                "--resume",
            ]
        )
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        e.value.code == 1
        and len(err) == 1
        and err[0].startswith("hdpo.py: error: --resume: no checkpoint")
    )


class RunsCode:
    """Unpickling this calls os.mkdir(path): what a malicious checkpoint could do instead."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


def test_a_checkpoint_carrying_a_pickled_callable_is_refused_not_run(
    resumed, tmp_path, tiny_qwen_dir, capsys
):
    """Issue 25, item 7: a checkpoint folder whose trainer.pt holds a pickled callable (a download
    from elsewhere) is refused with one line on --resume, and the callable never runs; every file
    of a real checkpoint loads with weights_only=True."""
    import pickle

    out, _, _ = resumed
    ckpt = tmp_path / "downloaded"
    shutil.copytree(find_checkpoint("latest", str(out)), ckpt)
    for f in glob.glob(os.path.join(ckpt, "*.pt")):
        torch.load(f, weights_only=True)  # the real files: tensors and plain data only
    marker = str(tmp_path / "ran")
    pickle.loads(pickle.dumps(RunsCode(marker)))  # the payload is live: unpickling runs it
    assert os.path.isdir(marker)
    os.rmdir(marker)
    saved = torch.load(ckpt / "trainer.pt", weights_only=True)
    torch.save({**saved, "hook": RunsCode(marker)}, ckpt / "trainer.pt")
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        hdpo.main(["--model", tiny_qwen_dir, "--dataset", SAMPLE, "--output-dir",
                   str(tmp_path / "run"), "--resume", str(ckpt), "--max-steps", "9"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 1 and len(err) == 1, err
    assert err[0].startswith(f"hdpo.py: error: {ckpt / 'trainer.pt'}: refused"), err
    assert "weights_only=True" in err[0] and "mkdir" in err[0]
    assert not os.path.exists(marker)  # never ran


def test_resume_restores_the_cuda_rng_of_its_own_device_with_fewer_gpus(monkeypatch, tmp_path):
    """Issue 25, item 8: a rank saves the CUDA generator of its own device (here cuda:3 of an
    8-GPU run) and a resume on a 1-GPU machine restores it onto cuda:0 (no index 3 needed); the
    Python, numpy and torch generators come back exactly, from a weights_only file. The CUDA calls
    are faked: this machine may have no GPU."""
    import random

    import numpy as np

    from harness.checkpoint import load_plain, rng_state, set_rng_state

    states, restored = {3: torch.tensor([3, 3], dtype=torch.uint8)}, []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: states[device.index])
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device: restored.append((s, device)))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", None)  # no all-devices restore
    monkeypatch.setenv("LOCAL_RANK", "3")
    torch.save(rng_state(), tmp_path / "rng-3.pt")
    want = random.random(), np.random.rand(), torch.rand(1)
    monkeypatch.setenv("LOCAL_RANK", "0")  # the resume: one GPU
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    set_rng_state(load_plain(tmp_path / "rng-3.pt"))
    ((state, device),) = restored
    assert torch.equal(state, states[3]) and device == torch.device("cuda", 0)
    assert (random.random(), np.random.rand()) == want[:2] and torch.equal(torch.rand(1), want[2])


# ---------------------------------------------------------------- Ctrl-C / SIGTERM


def test_ctrl_c_finishes_the_step_and_saves_a_checkpoint(tiny_qwen_dir, tmp_path, monkeypatch):
    """SIGINT during step 1 of 4: train() finishes step 1, checkpoints it, writes no final model and
    returns (the subprocess SIGTERM test below resumes from such a checkpoint)."""
    seen = []
    fallback = signal.signal(
        signal.SIGINT, lambda *a: seen.append("not handled by hdpo")
    )  # never kill pytest
    write = harness.logs.append_jsonl

    def append_and_interrupt(path, row):
        write(path, row)
        if path.endswith("metrics.jsonl") and row["step"] == 1:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(harness.logs, "append_jsonl", append_and_interrupt)
    try:
        res = hdpo.train(
            args_for(tiny_qwen_dir, tmp_path, "--max-steps", "4"),
            train_rows=rows(),
            val_rows=[],
            reward_fn=hash_reward,
        )
    finally:
        signal.signal(signal.SIGINT, fallback)
    assert not seen, "hdpo.train did not handle SIGINT"
    assert res["interrupted"] and res["steps"] == 1
    assert checkpoints(tmp_path) == ["step-000001"] and not leftovers(tmp_path)
    assert not os.path.exists(tmp_path / "final")
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1]


def cli_env():
    return dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
    )


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_that_resume_continues(tiny_qwen_dir, tmp_path):
    """`python hdpo.py ... --max-steps 1000`, SIGTERM after "step 1/": it finishes the step, writes
    a checkpoint and exits; --resume continues from it."""
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        os.path.join(ROOT, "hdpo.py"),
        "--model",
        tiny_qwen_dir,
        "--dataset",
        SAMPLE,
        "--max-steps",
        "1000",
        "--prompts-per-step",
        "2",
        "--num-generations",
        "2",
        "--max-new-tokens",
        "4",
        "--distill-weight",
        "0",
        "--eval-every",
        "0",
        "--output-dir",
        str(out),
    ]
    with open(tmp_path / "stderr.txt", "w") as err:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT, env=cli_env()
        )
    lines, q = [], queue.Queue()
    threading.Thread(
        target=lambda: [q.put(ln) for ln in proc.stdout] + [q.put(None)], daemon=True
    ).start()
    try:
        deadline = time.time() + 240
        while not any(ln.startswith("step 1/") for ln in lines):
            line = q.get(timeout=max(deadline - time.time(), 0.1))
            assert line is not None, (
                "exited before step 1: " + "".join(lines) + (tmp_path / "stderr.txt").read_text()
            )
            lines.append(line)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    while (line := q.get(timeout=10)) is not None:
        lines.append(line)
    text = "".join(lines)
    assert proc.returncode == 130, "expected exit 130 after a checkpoint on SIGTERM: " + text
    assert "checkpoint:" in text, text + (tmp_path / "stderr.txt").read_text()
    ckpt = find_checkpoint("latest", str(out))
    step = torch.load(os.path.join(ckpt, "trainer.pt"), weights_only=True)["step"]
    assert 1 <= step < 1000 and not leftovers(out)
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == list(range(1, step + 1))
    res = hdpo.train(
        train_args(
            tiny_qwen_dir,
            out,
            "--prompts-per-step",
            "2",
            "--distill-weight",
            "0",
            "--max-steps",
            str(step + 1),
            "--resume",
        ),
        train_rows=rows(),
        val_rows=[],
        reward_fn=hash_reward,
    )
    assert res["steps"] == step + 1
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == list(range(1, step + 2))


# ---------------------------------------------------------------- non-finite loss or gradient


def nan_reward_for(calls):
    """hash_reward, except NaN for the first `calls` calls (a NaN group has no cliff, so a NaN step
    makes exactly P*G calls)."""
    n = [0]

    def reward(text, answer):
        n[0] += 1
        return float("nan") if n[0] <= calls else hash_reward(text, answer)

    return reward


def test_non_finite_steps_are_skipped_counted_and_leave_the_weights_alone(tiny_qwen_dir, tmp_path):
    res = hdpo.train(
        args_for(
            tiny_qwen_dir,
            tmp_path,
            "--max-steps",
            "3",
            "--save-every",
            "1",
            "--keep-checkpoints",
            "3",
            "--max-bad-steps",
            "3",
        ),
        train_rows=rows(),
        val_rows=[],
        reward_fn=nan_reward_for(2 * P * G),
    )
    m = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["skipped"] for r in m] == [True, True, False]
    assert [r["skipped_steps"] for r in m] == [1, 2, 2] and res["skipped_steps"] == 2
    assert all(
        r["grad_norm"] is None or r["loss"] is None for r in m[:2]
    )  # NaN logged as null (strict JSON)
    init = state_dict(tiny_qwen_dir)
    ck = lambda s: os.path.join(tmp_path, "checkpoints", f"step-{s:06d}")
    after2 = state_dict(os.path.join(ck(2), "model"))
    assert all(torch.equal(after2[k], init[k]) for k in init)  # no update in a skipped step
    t2 = torch.load(os.path.join(ck(2), "trainer.pt"), weights_only=True)
    assert (
        t2["optimizer"]["state"] == {} and t2["bad_steps"] == 2 and t2["skipped_steps"] == 2
    )  # AdamW untouched
    t3 = torch.load(os.path.join(ck(3), "trainer.pt"), weights_only=True)
    assert t3["bad_steps"] == 0  # a finite step resets the run of bad steps
    if m[2]["grad_norm"] > 0:
        after3 = state_dict(os.path.join(ck(3), "model"))
        assert any(not torch.equal(after3[k], init[k]) for k in init)


def test_too_many_non_finite_steps_in_a_row_stop_with_a_one_line_error(
    tiny_qwen_dir, tmp_path, monkeypatch, capsys
):
    fake = types.ModuleType("verify")  # the CLI scores with verify.reward: make every reward NaN
    fake.reward = lambda text, answer: float("nan")
    monkeypatch.setitem(sys.modules, "verify", fake)
    argv = [
        "--model",
        tiny_qwen_dir,
        "--dataset",
        SAMPLE,
        "--max-steps",
        "10",
        "--prompts-per-step",
        "2",
        "--num-generations",
        "2",
        "--max-new-tokens",
        "4",
        "--eval-every",
        "0",
        "--distill-weight",
        "0",
    ]
    with pytest.raises(TrainingError, match="non-finite"):  # --debug: the exception itself
        hdpo.main(argv + ["--output-dir", str(tmp_path / "a"), "--max-bad-steps", "1", "--debug"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        hdpo.main(argv + ["--output-dir", str(tmp_path / "b"), "--max-bad-steps", "2"])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    msgs = [ln for ln in err.splitlines() if "error" in ln.lower()]
    assert (
        len(msgs) == 1
        and msgs[0].startswith("hdpo.py: error:")
        and "2 non-finite steps in a row" in msgs[0]
    ), err
    m = read_jsonl(tmp_path / "b" / "metrics.jsonl")
    assert [r["skipped"] for r in m] == [True, True] and m[-1]["skipped_steps"] == 2


# ---------------------------------------------------------------- bad input: one line on stderr,
# exit 1 (argparse: 2)


def write_jsonl(path, data):
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in data)
    return str(path)


@pytest.fixture(scope="module")
def cli_runs(tiny_qwen_dir, tmp_path_factory):
    """Every bad-input command, started together (they spend their time importing torch), then
    awaited."""
    d = tmp_path_factory.mktemp("cli")
    no_answer = write_jsonl(
        d / "no_answer.jsonl",
        [{"problem": "1 + 1?", "expected_answer": "2"}, {"problem": "2 + 2?"}],
    )
    no_problem = write_jsonl(
        d / "no_problem.jsonl",
        [{"problem": "1 + 1?", "expected_answer": "2"}, {"problem": "", "expected_answer": "4"}],
    )
    (d / "empty.jsonl").write_text("")
    small = [
        "--max-steps",
        "1",
        "--prompts-per-step",
        "1",
        "--num-generations",
        "2",
        "--max-new-tokens",
        "4",
        "--eval-every",
        "0",
    ]
    cases = {
        "missing_folder": ["--model", "/nonexistent/hdpo-model", "--dataset", SAMPLE],
        "hub_offline": ["--model", "no-such-org/no-such-model", "--dataset", SAMPLE],
        "missing_folder_debug": [
            "--model",
            "/nonexistent/hdpo-model",
            "--dataset",
            SAMPLE,
            "--debug",
        ],
        "row_without_answer": ["--model", tiny_qwen_dir, "--dataset", no_answer],
        "row_without_problem": ["--model", tiny_qwen_dir, "--dataset", no_problem],
        "empty_dataset": ["--model", tiny_qwen_dir, "--dataset", str(d / "empty.jsonl")],
        "invalid_flag": ["--max-bad-steps", "0"],
    }
    procs = {}
    for name, extra in cases.items():
        cmd = [
            sys.executable,
            os.path.join(ROOT, "hdpo.py"),
            *small,
            "--output-dir",
            str(d / name),
            *extra,
        ]
        procs[name] = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=cli_env()
        )
    res = {}
    for name, p in procs.items():
        out, err = p.communicate(timeout=600)
        res[name] = subprocess.CompletedProcess(p.args, p.returncode, out, err)
    return res


@pytest.mark.parametrize(
    "case,needles",
    [
        (
            "missing_folder",
            ["/nonexistent/hdpo-model", "no such folder", "local folder", "--model"],
        ),
        ("hub_offline", ["no-such-org/no-such-model", "offline", "local folder", "--model"]),
        ("row_without_answer", ["no_answer.jsonl", "row 1", "no answer"]),
        ("row_without_problem", ["no_problem.jsonl", "row 1", "no problem"]),
        ("empty_dataset", ["empty.jsonl", "empty"]),
    ],
)
def test_bad_input_is_one_line_on_stderr_and_exit_1(cli_runs, case, needles):
    r = cli_runs[case]
    assert r.returncode == 1, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr  # nothing else on stderr: no progress bars, no warnings
    assert lines[0].startswith("hdpo.py: error:")
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_debug_shows_the_traceback(cli_runs):
    r = cli_runs["missing_folder_debug"]
    assert r.returncode != 0 and "Traceback" in r.stderr and "ModelLoadError" in r.stderr


def test_invalid_flag_value_is_an_argparse_error(cli_runs):
    r = cli_runs["invalid_flag"]
    assert (
        r.returncode == 2
        and "usage:" in r.stderr
        and "--max-bad-steps" in r.stderr
        and "Traceback" not in r.stderr
    )


@pytest.mark.parametrize(
    "flags",
    [
        ["--save-every", "-1"],
        ["--keep-checkpoints", "0"],
        ["--max-bad-steps", "0"],
        ["--save-every", "x"],
        ["--max-steps", "-1"],
        ["--val-fraction", "1"],
        # torch.optim.AdamW rejects these with a traceback; a negative clip norm flips
        # the gradient's sign and 0 zeroes every update, silently
        ["--adam-betas", "0.9", "1.0"],
        ["--adam-eps=-1e-8"],
        ["--weight-decay", "-0.1"],
        ["--max-grad-norm", "0"],
        ["--max-grad-norm", "-1"],
    ],
    ids=" ".join,
)
def test_invalid_flag_values_are_argparse_errors(flags, capsys):
    with pytest.raises(SystemExit) as e:
        hdpo.parse_args(flags)
    assert e.value.code == 2 and "usage:" in capsys.readouterr().err


# ---------------------------------------------------------------- the offline demo


@pytest.fixture
def short_demo(monkeypatch):
    """demo.main(["--arms", "hdpo", ...]) with the demo shortened (conftest.shorten_demo)."""
    import demo

    shorten_demo(monkeypatch.setattr)
    fake = types.ModuleType("verify")  # a 6-step warm start solves nothing: hash reward instead
    fake.reward = hash_reward
    monkeypatch.setitem(sys.modules, "verify", fake)
    return lambda *argv: demo.main(["--arms", "hdpo", *DEMO_ARGS, *argv])


def test_short_demo_resume_equals_uninterrupted(tmp_path, short_demo):
    """`demo.py --arms hdpo --max-steps 4` vs `--max-steps 2` then `--resume --max-steps 4` (the
    demo shortened): steps 3-4 identical, every logged field but timings."""
    short_demo("--output-dir", str(tmp_path / "straight"), "--max-steps", "4")
    short_demo("--output-dir", str(tmp_path / "resumed"), "--max-steps", "2")
    fresh_process_rng()
    short_demo("--output-dir", str(tmp_path / "resumed"), "--max-steps", "4", "--resume")
    want = read_jsonl(tmp_path / "straight" / "hdpo" / "metrics.jsonl")
    got = read_jsonl(tmp_path / "resumed" / "hdpo" / "metrics.jsonl")
    assert [r["step"] for r in got] == [r["step"] for r in want] == [1, 2, 3, 4]
    assert any(r["grad_norm"] > 0 for r in want[2:]), "the test needs updates in steps 3-4"
    for w, g in zip(want, got):
        assert same(untimed(g), untimed(w)), w["step"]
    a = state_dict(str(tmp_path / "straight" / "hdpo" / "final"))
    b = state_dict(str(tmp_path / "resumed" / "hdpo" / "final"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def run_demo(out, *extra):
    cmd = [
        sys.executable,
        os.path.join(ROOT, "demo.py"),
        "--arms",
        "hdpo",
        "--output-dir",
        str(out),
        *extra,
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=cli_env(), timeout=1800)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return read_jsonl(os.path.join(str(out), "hdpo", "metrics.jsonl"))


@pytest.mark.skipif(
    not os.environ.get("HDPO_DEMO_TESTS"),
    reason="the full demo takes minutes (its warm start): HDPO_DEMO_TESTS=1 runs it",
)
def test_demo_resume_equals_uninterrupted(tmp_path):
    """The commands, unshortened: `python demo.py --arms hdpo --max-steps 4` vs 2 steps then
    `--resume --max-steps 4`: steps 3-4 identical."""
    want = run_demo(tmp_path / "straight", "--max-steps", "4")
    run_demo(tmp_path / "resumed", "--max-steps", "2")
    got = run_demo(tmp_path / "resumed", "--max-steps", "4", "--resume")
    assert [r["step"] for r in got] == [r["step"] for r in want] == [1, 2, 3, 4]
    for w, g in zip(want[2:], got[2:]):
        assert same(untimed(g), untimed(w)), w["step"]
