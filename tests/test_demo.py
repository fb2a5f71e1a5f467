"""The offline demo (`python demo.py`), shortened: a few warm-start and training steps."""

import json
import math
import os

import pytest
from conftest import DEMO_ARGS, shorten_demo

import demo
import hdpo

ARMS = ("grpo", "hdpo")


def test_tokenizer_round_trips_prompts_and_solutions(tmp_path):
    from transformers import AutoTokenizer

    from data import chat_prompt

    train, heldout, warm = demo.make_task(0, n_train=8, n_heldout=4, n_warm=8)
    rows = train + heldout + warm
    demo.build_tokenizer(str(tmp_path))
    # AutoTokenizer rebuilds a Qwen2 pipeline when config.json says qwen2: load it as hdpo.train
    # does.
    demo.build_model(demo.build_tokenizer(), 0).config.save_pretrained(str(tmp_path))
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    assert tok.eos_token_id is not None and tok.pad_token_id is not None
    texts = [
        chat_prompt(tok, hdpo.privileged_prompt(r["problem"], r["answer"])) + r["solution"]
        for r in rows
    ]
    texts += [chat_prompt(tok, r["problem"]) for r in rows]
    for text in texts:
        ids = tok(text, add_special_tokens=False).input_ids
        assert len(ids) == len(text)  # one token per character
        assert tok.decode(ids, skip_special_tokens=True) == text
    for r in rows:  # exact answers: the worked solution's left-hand side evaluates to the answer
        lhs = r["solution"].split("=")[0]
        assert r["solution"].endswith("\\boxed{" + r["answer"] + "}") and int(r["answer"]) == eval(
            lhs
        )
        assert all(
            n in r["problem"] or demo.WORDS[int(n)] in r["problem"]
            for n in lhs.replace("*", "+").split("+")
        )
    assert not {r["problem"] for r in train} & {r["problem"] for r in heldout}


@pytest.fixture(scope="module")
def short_demo(tmp_path_factory, request):
    """One shortened demo run, shared by the tests below."""
    import torch

    out = str(tmp_path_factory.mktemp("demo"))
    mp = pytest.MonkeyPatch()
    request.addfinalizer(mp.undo)
    threads = torch.get_num_threads()  # one thread: tiny matrices, no oversubscription
    torch.set_num_threads(1)
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    shorten_demo(mp.setattr)
    argv = ["--output-dir", out, *DEMO_ARGS]
    demo.main(argv + ["--max-steps", "2"])
    return out, argv


def test_demo_summary_fields(short_demo):
    out, _ = short_demo
    with open(os.path.join(out, "demo_summary.json")) as f:
        summary = json.load(f)
    assert set(summary) == set(ARMS)
    for arm in ARMS:
        s = summary[arm]
        for key in ("cliff_fraction_start", "cliff_fraction_end"):
            assert isinstance(s[key], float) and 0.0 <= s[key] <= 1.0
        assert set(s["heldout"]) == {"greedy", "pass@1", "pass@4", "pass@8"}
        assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in s["heldout"].values())
        assert s["heldout"]["pass@1"] <= s["heldout"]["pass@4"] <= s["heldout"]["pass@8"]
        assert isinstance(s["time_s"], float) and s["time_s"] >= 0
        assert s["steps"] == 2
    assert summary["grpo"]["distill_weight"] == 0.0 and summary["hdpo"]["distill_weight"] > 0
    # both arms start from the same warm start, measured the same way
    assert summary["grpo"]["cliff_fraction_start"] == summary["hdpo"]["cliff_fraction_start"]


def test_demo_writes_metrics_per_step(short_demo):
    out, _ = short_demo
    for arm in ARMS:
        with open(os.path.join(out, arm, "metrics.jsonl")) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        assert [r["step"] for r in rows] == [1, 2]
        assert all(
            0.0 <= r["cliff_fraction"] <= 1.0 and 0.0 <= r["reward_mean"] <= 1.0 for r in rows
        )
        assert all(r["distill_tokens"] == 0 for r in rows) if arm == "grpo" else True
        assert os.path.isdir(os.path.join(out, arm, "final"))


def test_demo_warm_start_loads(short_demo):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _ = short_demo
    path = os.path.join(out, "warm_start")
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert model.config.model_type == "qwen2" and model.config.vocab_size == len(tok)
    ids = tok("Q: What is 1+2?\nA: ", return_tensors="pt").input_ids
    with torch.no_grad():
        assert model(ids).logits.shape == (1, ids.shape[1], len(tok))


def test_demo_plot(short_demo):
    pytest.importorskip("matplotlib")
    out, _ = short_demo
    assert os.path.getsize(os.path.join(out, "demo.png")) > 0


def test_demo_resume_and_one_arm(short_demo):
    """--resume reuses the warm start and each arm's checkpoint; --arms runs one arm."""
    out, argv = short_demo
    with open(os.path.join(out, "demo_summary.json")) as f:
        before = json.load(f)
    demo.main(argv + ["--resume", "--arms", "hdpo", "--max-steps", "3"])
    with open(os.path.join(out, "demo_summary.json")) as f:
        summary = json.load(f)
    assert (
        summary["hdpo"]["steps"] == 3 and summary["grpo"] == before["grpo"]
    )  # the other arm's result is kept
    with open(os.path.join(out, "hdpo", "metrics.jsonl")) as f:
        assert [json.loads(line)["step"] for line in f if line.strip()] == [1, 2, 3]


def test_demo_defaults_apply_only_to_flags_not_given():
    """The demo's settings (demo.DEMO_TRAINING, and the hdpo_reinject arm's delay and cap,
    demo.DEMO_REINJECT) replace hdpo.py's defaults; a flag given on the command line wins;
    `--arms all` is the three arms."""
    a = demo.parse_args(["--reinject-delay", "3", "--lr", "0.5"])
    assert (a.reinject_delay, a.reinject_max) == (3, dict(demo.DEMO_REINJECT)["reinject_max"])
    assert a.lr == 0.5 and a.max_steps == dict(demo.DEMO_TRAINING)["max_steps"]
    assert a.output_dir == "runs/demo" and hdpo.parse_args([]).output_dir == "runs/hdpo"
    assert demo.parse_args(["--arms", "all"]).arms == "all"
    assert demo.ARM_SETS["all"] == ("grpo", "hdpo", "hdpo_reinject")


def test_demo_reinject_arm(short_demo):
    """`--arms hdpo_reinject` (after the two-arm run): HDPO with re-injection from the same warm
    start, measured the same way; the other arms' results are kept; only its metrics carry the
    re-injection counters (the hdpo arm runs with re-injection off)."""
    out, argv = short_demo
    demo.main(argv + ["--resume", "--arms", "hdpo_reinject", "--max-steps", "2"])
    with open(os.path.join(out, "demo_summary.json")) as f:
        summary = json.load(f)
    assert list(summary) == ["grpo", "hdpo", "hdpo_reinject"]
    s, h = summary["hdpo_reinject"], summary["hdpo"]
    assert s["cliff_fraction_start"] == h["cliff_fraction_start"]
    assert s["heldout_start"] == h["heldout_start"]
    assert s["distill_weight"] == h["distill_weight"] > 0 and s["steps"] == 2
    assert (s["reinject"]["delay"], s["reinject"]["max"]) == tuple(v for _, v in demo.DEMO_REINJECT)
    assert "reinject" not in h
    read = lambda arm: [
        json.loads(line) for line in open(os.path.join(out, arm, "metrics.jsonl")) if line.strip()
    ]
    assert all("reinject_queue" in r for r in read("hdpo_reinject"))
    assert not any("reinject_queue" in r for r in read("hdpo"))


def test_report_on_the_demo_folders(short_demo, tmp_path, capsys):
    """harness/report.py on the demo's output: runs/demo stands for its two arm folders
    (warm_start is no run); the GRPO arm sits under the paper's GRPO row, the λ = 1 HDPO arm under
    the runs with no row; no eval.jsonl (the demo validates only with --eval-every), which the
    report says."""
    from harness import report

    out, _ = short_demo
    arms = [os.path.join(out, a) for a in demo.ARM_SETS["all"]]
    arms = [a for a in arms if os.path.isdir(a)]
    assert arms[:2] == [os.path.join(out, a) for a in ARMS]  # hdpo_reinject if its test ran first
    for argv in ([out], arms):
        runs = report.main(argv + ["-o", str(tmp_path / "r.png")])
        text = capsys.readouterr().out
        assert [r["name"] for r in runs] == [os.path.normpath(a) for a in arms]
        for r, arm in zip(runs, arms):
            with open(os.path.join(arm, "metrics.jsonl")) as f:
                assert r["steps"] == [json.loads(ln)["step"] for ln in f][-1]
            assert r["evals"] == [] and r["best"] == {}
        grpo_part, rest = text.split("HDPO frozen, λ=0.01")
        assert os.path.normpath(arms[0]) in grpo_part and os.path.normpath(arms[1]) not in grpo_part
        other = rest.split("Runs with no row in the paper's table:")[1]
        assert f"{os.path.normpath(arms[1])} (λ=1 frozen)" in other
        assert text.count("(no validation)") == len(arms)
        assert os.path.join(out, "demo_summary.json") in text


def untimed(summary):
    return {arm: {k: v for k, v in s.items() if k != "time_s"} for arm, s in summary.items()}


def test_same_seed_and_threads_give_identical_summaries(tmp_path, monkeypatch):
    """The demo's determinism: the same seed on the same machine and thread count gives the same
    numbers (every measure of both arms; only the wall times differ)."""
    import torch

    shorten_demo(monkeypatch.setattr)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        runs = [demo.main(["--output-dir", str(tmp_path / d), "--max-steps", "2", *DEMO_ARGS])
                for d in ("a", "b")]  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert runs == [None, None]  # main returns nothing; the summaries are the files
    a, b = (json.loads((tmp_path / d / "demo_summary.json").read_text()) for d in ("a", "b"))
    assert untimed(a) == untimed(b) and set(a) == set(ARMS)


def test_seeds_run_each_seed_and_report_the_distribution(tmp_path, monkeypatch):
    """--seeds 3 4: one demo per seed in its own folder, then each measure's per-seed values and
    their mean, standard deviation, min and max, with the cliff margin GRPO end − HDPO end."""
    import statistics

    shorten_demo(monkeypatch.setattr)
    demo.main(["--output-dir", str(tmp_path), "--max-steps", "1", "--seeds", "3", "4", *DEMO_ARGS])
    res = json.loads((tmp_path / "demo_seeds.json").read_text())
    assert res["seeds"] == [3, 4] and set(res["per_seed"]) == {"3", "4"}
    assert res["command"].startswith("python demo.py --output-dir ")
    assert "--seeds 3 4" in res["command"]
    assert res["machine"]["cores"] == os.cpu_count() and res["threads"] >= 1
    for s in ("3", "4"):
        summary = json.loads((tmp_path / f"seed-{s}" / "demo_summary.json").read_text())
        row = res["per_seed"][s]
        assert row == demo.seed_measures(summary)
        assert row["margin"] == row["grpo/cliffs_end"] - row["hdpo/cliffs_end"]
    for k, d in res["distribution"].items():
        v = [res["per_seed"][s][k] for s in ("3", "4")]
        assert d["values"] == v and d["min"] == min(v) and d["max"] == max(v)
        assert math.isclose(d["mean"], statistics.mean(v))
        assert math.isclose(d["std"], statistics.stdev(v), abs_tol=1e-12)
    assert demo.parse_args(["--seeds", "3"]).seeds == [3]  # one number N: seeds 0..N-1
