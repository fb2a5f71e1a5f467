"""Watching a run: the --report-to trackers (read back through each tracker's own reader or
store), the entropy metric's wiring, and harness/report.py's table and figure on short real runs."""

import glob
import json
import math
import os
import shutil
import struct
import subprocess
import sys

import pytest
from conftest import ROOT, hash_reward, read_jsonl, rows, train_args

import harness.trackers
import hdpo
from harness import report

STEPS = 4
TRACKER_PROJECT = "hdpo-test"


def installed(name):
    try:
        __import__(name)
        return True
    except ImportError:
        return False


@pytest.fixture(scope="module")
def two_runs(tiny_qwen_dir, tmp_path_factory, request):
    """Two short real runs on the tiny model with validation every 2 steps: GRPO (λ = 0), fed to
    every tracker installed here, and HDPO with a frozen teacher at λ = 0.1."""
    tmp = tmp_path_factory.mktemp("runs")
    mp = pytest.MonkeyPatch()
    request.addfinalizer(mp.undo)
    mp.setenv("TRACKIO_DIR", str(tmp / "trackio"))  # read when trackio is first imported
    mp.setenv("WANDB_SILENT", "true")
    mp.delenv("WANDB_MODE", raising=False)  # offline, the default
    trackers = [t for t in ("tensorboard", "trackio", "wandb") if installed(t)]
    common = ["--max-steps", str(STEPS), "--eval-every", "2", "--eval-n", "8", "--eval-k", "4", "8"]
    common += ["--tracker-project", TRACKER_PROJECT, "--samples-per-step", "2"]
    grpo = train_args(tiny_qwen_dir, tmp / "grpo", *common, "--distill-weight", "0",
                      "--report-to", *(trackers or ["none"]))  # fmt: skip
    frozen = train_args(tiny_qwen_dir, tmp / "frozen-0.1", *common, "--distill-weight", "0.1",
                        "--teacher", "frozen")  # fmt: skip
    val = rows(16)[12:]  # 4 validation problems outside the 12 training ones
    for args in (grpo, frozen):
        hdpo.train(args, train_rows=rows(), val_rows=val, reward_fn=hash_reward)
    return {"grpo": str(tmp / "grpo"), "frozen": str(tmp / "frozen-0.1"), "trackers": trackers}


def expected_scalars(run_dir):
    """{(name, step): value} a tracker should hold: metrics.jsonl's numbers under their names
    (val_* aside), eval.jsonl's under eval/<key> and eval/best/<key>."""
    want = {}
    for m in read_jsonl(os.path.join(run_dir, "metrics.jsonl")):
        for k, v in m.items():
            if k != "step" and not k.startswith("val_") and v is not None:
                want[k, m["step"]] = float(v)
    for e in read_jsonl(os.path.join(run_dir, "eval.jsonl")):
        for k, v in e.items():
            if isinstance(v, dict):
                want.update({(f"eval/{k}/{b}", e["step"]): float(x) for b, x in v.items()})
            elif k != "step" and v is not None:
                want[f"eval/{k}", e["step"]] = float(v)
    return want


def samples_by_step(run_dir):
    out = {}
    for s in read_jsonl(os.path.join(run_dir, "samples.jsonl")):
        out.setdefault(s["step"], []).append(s)
    return out


def assert_same_scalars(got, want):
    assert {k for k, _ in got} == {k for k, _ in want}
    assert set(got) == set(want)
    for key, v in want.items():
        assert got[key] == pytest.approx(v, rel=1e-6, abs=1e-9), key


# ---------------------------------------------------------------- trackers


def test_runs_have_validation_and_samples(two_runs):
    """What the tracker tests compare against: every step logged, validation at steps 2 and 4."""
    for run in ("grpo", "frozen"):
        assert [m["step"] for m in read_jsonl(os.path.join(two_runs[run], "metrics.jsonl"))] == [
            1, 2, 3, 4,
        ]  # fmt: skip
        evals = read_jsonl(os.path.join(two_runs[run], "eval.jsonl"))
        assert [e["step"] for e in evals] == [2, 4]
        assert all(e["pass@4"] is not None and e["pass@8"] is not None for e in evals)
    assert sorted(samples_by_step(two_runs["grpo"])) == [1, 2, 3, 4]


def test_tensorboard_event_files_hold_the_metrics_validation_and_samples(two_runs):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing import event_accumulator as ea

    run = two_runs["grpo"]
    acc = ea.EventAccumulator(
        os.path.join(run, "tensorboard"), size_guidance={ea.SCALARS: 0, ea.TENSORS: 0}
    )
    acc.Reload()
    got = {(tag, e.step): e.value for tag in acc.Tags()["scalars"] for e in acc.Scalars(tag)}
    want = expected_scalars(run)
    assert "reward_mean" in {k for k, _ in want} and "eval/best/pass@8" in {k for k, _ in want}
    assert {k for k, _ in got} == {k for k, _ in want}
    assert set(got) == set(want)
    for key, v in want.items():  # event files store float32
        assert got[key] == pytest.approx(v, rel=1e-6, abs=1e-6), key
    tables = {
        e.step: e.tensor_proto.string_val[0].decode() for e in acc.Tensors("samples/text_summary")
    }
    cell = lambda v: str(v).replace("|", "\\|").replace("\n", " ↵ ")
    for step, samples in samples_by_step(run).items():
        lines = tables[step].split("\n")
        assert lines[0] == "| kind | reward | problem | answer | completion |"
        assert lines[2:] == [
            f"| {s['kind']} | {s['reward']} | {cell(s['problem'])} | {cell(s['answer'])} | "
            f"{cell(s['completion'])} |"
            for s in samples
        ]


def test_trackio_local_store_holds_the_metrics_validation_and_samples(two_runs):
    pytest.importorskip("trackio")
    from trackio.sqlite_storage import SQLiteStorage

    run = two_runs["grpo"]
    logs = SQLiteStorage.get_logs(TRACKER_PROJECT, os.path.normpath(run))
    assert logs, "no trackio run named after the output folder"
    got, tables = {}, {}
    for row in logs:
        for k, v in row.items():
            if k == "samples":
                tables[row["step"]] = v["_value"]
            elif k not in ("step", "timestamp"):
                got[k, row["step"]] = v
    assert_same_scalars(got, expected_scalars(run))
    for step, samples in samples_by_step(run).items():
        assert tables[step] == [
            {c: s[c] for c in ("kind", "reward", "problem", "answer", "completion")}
            for s in samples
        ]


def wandb_records(path):
    """The records of a .wandb file: W&B's LevelDB-style log (7-byte header: ':W&B', magic,
    version; then 32 KiB blocks of chunks: CRC-32 (4 bytes), length (2), type 1 full / 2 first /
    3 middle / 4 last), each record a wandb_internal_pb2.Record."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = open(path, "rb").read()
    assert data[:4] == b":W&B", "not a .wandb file"
    pos, block, records, parts = 7, 32768, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:  # zero padding
            continue
        parts = chunk if kind in (1, 2) else parts + chunk
        if kind in (1, 4):
            r = pb.Record()
            r.ParseFromString(parts)
            records.append(r)
    return records


def test_wandb_offline_run_holds_the_metrics_validation_and_samples(two_runs):
    pytest.importorskip("wandb")
    run = two_runs["grpo"]
    files = glob.glob(os.path.join(run, "wandb", "offline-run-*", "run-*.wandb"))
    assert len(files) == 1, files
    got, tables = {}, {}
    for r in wandb_records(files[0]):
        if r.WhichOneof("record_type") != "history":
            continue
        items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
        step = items.pop("_step")
        for k, v in items.items():
            if k.startswith("samples/"):  # a table is a file, its fields nested under the key
                tables.setdefault(step, {})[k.split("/", 1)[1]] = v
            elif not k.startswith("_"):
                got[k, step] = v
    assert_same_scalars(got, expected_scalars(run))
    media = os.path.dirname(files[0])
    for step, samples in samples_by_step(run).items():
        with open(os.path.join(media, "files", tables[step]["path"])) as f:
            table = json.load(f)
        assert table["columns"] == ["kind", "reward", "problem", "answer", "completion"]
        assert table["data"] == [[s[c] for c in table["columns"]] for s in samples]


@pytest.mark.parametrize("tracker", ["tensorboard", "wandb", "trackio"])
def test_missing_tracker_package_is_a_one_line_error_naming_the_pip_command(
    tracker, monkeypatch, capsys, tmp_path
):
    monkeypatch.setitem(sys.modules, tracker, None)  # `import tracker` now fails
    with pytest.raises(SystemExit) as e:
        hdpo.main(["--model", str(tmp_path / "no-model"), "--output-dir", str(tmp_path / "o"),
                   "--report-to", tracker])  # fmt: skip
    assert e.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"pip install {tracker}" in err
    assert not os.path.exists(tmp_path / "o"), "it fails before anything is written"


def test_report_to_none_goes_alone(capsys):
    with pytest.raises(SystemExit) as e:
        hdpo.parse_args(["--report-to", "none", "tensorboard"])
    assert e.value.code == 2 and "--report-to none" in capsys.readouterr().err
    assert hdpo.parse_args(["--report-to", "tensorboard", "trackio"]).report_to == [
        "tensorboard",
        "trackio",
    ]


@pytest.mark.slow
def test_no_tracker_or_matplotlib_is_imported_unless_asked_for():
    code = (
        "import sys, hdpo, demo, harness.report, harness.trackers\n"
        "args = hdpo.parse_args([])\n"
        "assert args.report_to == ['none']\n"
        "assert harness.trackers.Trackers(args).trackers == []\n"
        "names = ('tensorboard', 'wandb', 'trackio', 'matplotlib')\n"
        "print(sorted(m for m in names if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_trackers_are_rank_0_only(tmp_path):
    args = hdpo.parse_args(
        ["--output-dir", str(tmp_path), "--report-to", "tensorboard", "wandb", "trackio"]
    )
    t = harness.trackers.Trackers(args, rank=1)  # never imports or opens anything on another rank
    assert t.trackers == []
    t.log_step({"step": 1, "reward_mean": 0.5}, [])
    t.log_eval({"step": 1, "greedy": 0.5})
    t.close()
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- harness/report.py


def best_by_hand(run_dir):
    """{metric: (best value, first step)} from eval.jsonl, computed here without the report."""
    evals = read_jsonl(os.path.join(run_dir, "eval.jsonl"))
    out = {}
    for k in ("greedy", "pass@4", "pass@8"):
        top = max(e[k] for e in evals)
        out[k] = (top, min(e["step"] for e in evals if e[k] == top))
    return out


def section(text, title):
    """The lines under a paper row in the report, up to the next paper row."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(title + " "))
    end = next(
        (i for i in range(start + 1, len(lines)) if "(paper)" in lines[i] or not lines[i].strip()),
        len(lines),
    )
    return lines[start:end]


def test_report_table_on_two_short_real_runs(two_runs, tmp_path, capsys):
    png = tmp_path / "report.png"
    runs = report.main([two_runs["grpo"], two_runs["frozen"], "-o", str(png)])
    out = capsys.readouterr().out
    for method, _, _, *scores in report.PAPER_ROWS:  # the five rows with their numbers
        assert section(out, method)[0].split()[-5:] == [f"{v:.4f}" for v in scores] + [
            "2000",
            "(paper)",
        ]
    for name, row in (("grpo", "GRPO baseline"), ("frozen", "HDPO frozen, λ=0.1")):
        path = os.path.normpath(two_runs[name])
        lines = [ln for ln in section(out, row) if path in ln]
        assert len(lines) == 1, out
        best = best_by_hand(path)
        cells = [f"{best[k][0]:.4f} @{best[k][1]}" for k in ("greedy", "pass@4", "pass@8")]
        assert lines[0].split()[1:] == [*" ".join(cells).split(), str(STEPS), "*≠"]
        assert next(r for r in runs if r["name"] == path)["best"] == best
        assert sum(path in ln for ln in out.splitlines()) == 2  # its row, and its ≠ note
    assert sum(ln.strip() == "(no run)" for ln in out.splitlines()) == 3
    assert "* shorter than the paper's 2,000 steps" in out
    assert any(
        ln.startswith("≠") and "4 validation problems" in ln and "3x2 rollouts/step" in ln
        for ln in out.splitlines()
    )
    if installed("matplotlib"):
        assert png.stat().st_size > 10_000 and f"wrote {png}" in out
    else:
        assert not png.exists() and "pip install matplotlib" in out


def test_report_png(two_runs, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "r.png"
    report.main([two_runs["grpo"], two_runs["frozen"], "-o", str(png)])
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_report_without_matplotlib_says_so_in_one_line(two_runs, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    png = tmp_path / "r.png"
    report.main([two_runs["grpo"], "-o", str(png)])
    out = capsys.readouterr().out
    assert "matplotlib not installed: no report.png (pip install matplotlib)" in out.splitlines()
    assert not png.exists()


def test_report_on_a_partial_run(two_runs, tmp_path, capsys):
    """A run still being written: metrics up to step 3, validation at step 2 only, and a
    half-written last line."""
    run = tmp_path / "partial"
    shutil.copytree(two_runs["frozen"], run, ignore=shutil.ignore_patterns("checkpoints", "final"))
    metrics = read_jsonl(run / "metrics.jsonl")[:3]
    evals = read_jsonl(run / "eval.jsonl")[:1]
    (run / "metrics.jsonl").write_text(
        "".join(json.dumps(m) + "\n" for m in metrics) + '{"step": 4, "rew'
    )
    (run / "eval.jsonl").write_text(json.dumps(evals[0]) + "\n")
    runs = report.main([str(run), "-o", str(tmp_path / "r.png")])
    assert runs[0]["steps"] == 3
    assert runs[0]["best"] == {k: (evals[0][k], 2) for k in ("greedy", "pass@4", "pass@8")}
    out = capsys.readouterr().out
    assert any(str(run) in ln and ln.split()[-2:] == ["3", "*≠"] for ln in out.splitlines())


def test_report_on_a_folder_of_runs_and_without_args_json(two_runs, tmp_path, capsys):
    """A folder holding run folders stands for them; a run without args.json (older runs) is
    listed apart, and one without eval.jsonl says validation was off."""
    parent = tmp_path / "runs"
    shutil.copytree(
        two_runs["grpo"],
        parent / "a",
        ignore=shutil.ignore_patterns("checkpoints", "final", "wandb", "tensorboard"),
    )
    os.remove(parent / "a" / "args.json")
    os.remove(parent / "a" / "eval.jsonl")
    runs = report.main([str(parent), "-o", str(tmp_path / "r.png")])
    assert [r["name"] for r in runs] == [str(parent / "a")]
    out = capsys.readouterr().out
    other = out.split("Runs with no row in the paper's table:")[1]
    assert "config unknown (no args.json)" in other and "(no validation)" in other
    assert "no eval.jsonl (validation off: run hdpo.py with --eval-every N)" in out


def test_report_on_a_folder_that_is_not_a_run_is_a_one_line_error(tmp_path, capsys):
    for bad in (tmp_path, tmp_path / "missing"):
        with pytest.raises(SystemExit) as e:
            report.main([str(bad)])
        assert e.value.code == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("harness.report: error:")
        assert str(bad) in err


def test_paper_rows_are_table_1_of_paper_md():
    """The five rows in harness/report.py are the paper's Table 1, as restated in the team's
    PAPER.md (where the shared folder is beside the repository)."""
    paths = [
        os.path.join(ROOT, "shared", "PAPER.md"),
        os.path.join(ROOT, "..", "shared", "PAPER.md"),
    ]
    path = next((p for p in paths if os.path.exists(p)), None)
    if path is None:
        pytest.skip("PAPER.md not found beside the repository")
    table = {}
    for line in open(path, encoding="utf-8"):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[1].startswith("0."):
            table.setdefault(cells[0], tuple(float(c) for c in cells[1:]))
    for method, lam, _, *scores in report.PAPER_ROWS:
        key = "GRPO baseline (8×H200)" if lam == 0 else method
        assert table[key] == tuple(scores), method
    assert all(math.isclose(r[1], 0) == (r[2] is None) for r in report.PAPER_ROWS)


def test_tensorboard_drops_the_abandoned_steps_on_resume(tiny_qwen_dir, tmp_path):
    """Steps 1-3 saved at every step, then --resume from step 1 up to step 4: TensorBoard shows
    steps 1-4 once each, with the resumed run's values (as metrics.jsonl does)."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing import event_accumulator as ea

    out = tmp_path / "run"
    flags = ["--report-to", "tensorboard", "--save-every", "1", "--keep-checkpoints", "5"]
    first = train_args(tiny_qwen_dir, out, "--distill-weight", "0", "--max-steps", "3", *flags)
    hdpo.train(first, train_rows=rows(), val_rows=[], reward_fn=hash_reward)
    abandoned = [m["grad_norm"] for m in read_jsonl(out / "metrics.jsonl")][1:]
    older = os.path.join(out, "checkpoints", "step-000001")
    again = train_args(
        tiny_qwen_dir,
        out,
        "--distill-weight",
        "0",
        "--max-steps",
        "4",
        *flags,
        "--resume",
        older,
        "--seed",
        "7",
    )  # fmt: skip  (a different continuation)
    hdpo.train(again, train_rows=rows(), val_rows=[], reward_fn=hash_reward)
    acc = ea.EventAccumulator(str(out / "tensorboard"), size_guidance={ea.SCALARS: 0})
    acc.Reload()
    events = acc.Scalars("grad_norm")
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [e.step for e in events] == [m["step"] for m in metrics] == [1, 2, 3, 4]
    for e, m in zip(events, metrics):
        assert e.value == pytest.approx(m["grad_norm"], rel=1e-6)
    assert [m["grad_norm"] for m in metrics[1:3]] != pytest.approx(abandoned), "same values"
