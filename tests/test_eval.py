"""Tests for eval.py: pass@k, the evaluator and the CLI."""

import itertools
import json
import math
import os
import subprocess
import sys
from fractions import Fraction

import pytest
import torch
from conftest import DATA, ROOT

import eval as E
from data import DataError
from harness.loading import load_model

TOKENIZER_DIR = os.path.join(DATA, "qwen2.5-math-1.5b")
ENDOFTEXT, IM_END = 151643, 151645


@pytest.fixture(scope="module")
def qwen_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


@pytest.fixture(scope="module")
def tiny(tiny_qwen_dir):
    return load_model(tiny_qwen_dir, device="cpu")


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return str(path)


# ----------------------------------------------------------------------------- pass@k


def brute_force_pass_at_k(n, c, k):
    samples = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return Fraction(sum(any(samples[i] for i in s) for s in subsets), len(subsets))


def exact_pass_at_k(n, c, k):
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


def test_pass_at_k_matches_brute_force_subsets():
    for n in range(1, 11):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert E.pass_at_k(n, c, k) == pytest.approx(
                    float(brute_force_pass_at_k(n, c, k)), rel=1e-14, abs=0
                )


def test_pass_at_k_matches_exact_integer_arithmetic_up_to_n_1024():
    worst = 0.0
    ns = [16, 17, 64, 100, 255, 512, 1000, 1023, 1024]
    for n in ns:
        cs = sorted(
            {0, 1, 2, 3, n // 7, n // 3, n // 2, n - 64, n - 9, n - 8, n - 2, n - 1, n}
            & set(range(n + 1))
        )
        ks = sorted({1, 2, 4, 8, 16, 64, n // 2, n - 1, n} & set(range(1, n + 1)))
        for c in cs:
            for k in ks:
                exact = exact_pass_at_k(n, c, k)
                got = E.pass_at_k(n, c, k)
                if exact == 0:
                    assert got == 0.0
                else:
                    worst = max(worst, abs(Fraction(got) - exact) / exact)
    assert worst < 1e-12, worst


def test_pass_at_k_edge_values():
    assert E.pass_at_k(8, 0, 8) == 0.0
    assert E.pass_at_k(8, 8, 1) == 1.0
    assert E.pass_at_k(8, 1, 8) == 1.0  # every 8-subset of 8 holds the correct one
    assert E.pass_at_k(8, 3, 1) == pytest.approx(3 / 8, rel=1e-15)
    assert E.pass_at_k(1024, 1, 1) == pytest.approx(1 / 1024, rel=1e-15)  # no cancellation near 0


def test_pass_at_k_n_less_than_k_is_a_clear_error():
    with pytest.raises(ValueError, match=r"n=3 < k=4"):
        E.pass_at_k(3, 1, 4)
    with pytest.raises(ValueError, match="k must be >= 1"):
        E.pass_at_k(3, 1, 0)
    with pytest.raises(ValueError, match="c=5"):
        E.pass_at_k(4, 5, 1)


# ----------------------------------------------------------------------------- evaluate


def test_evaluate_matches_hand_computed_numbers(qwen_tokenizer):
    problems = ["P0: 1+2?", "P1: 2+2?", "P2: 3+3?"]
    answers = ["3", "4", "6"]
    greedy_text = {"P0": "3", "P1": "5", "P2": "6"}  # greedy: 2 of 3 right
    sample_text = {
        "P0": ["3", "3", "1", "3"],  # c = 3
        "P1": ["0", "4", "1", "2"],  # c = 1
        "P2": ["0", "0", "0", "0"],
    }  # c = 0
    calls = []

    def stub_generate(model, tokenizer, prompts, num_samples=1, greedy=False, **kw):
        calls.append((greedy, num_samples, kw.get("temperature")))
        out = []
        for p in prompts:
            key = next(k for k in greedy_text if k in p)
            texts = [greedy_text[key]] if greedy else sample_text[key]
            assert len(texts) == num_samples
            out += [{"text": t, "completion_ids": [0] * (i + 1)} for i, t in enumerate(texts)]
        return out

    res = E.evaluate(
        None,
        qwen_tokenizer,
        problems,
        answers,
        n=4,
        ks=(1, 2, 4),
        temperature=0.7,
        progress=False,
        generate_fn=stub_generate,
        reward_fn=lambda r, a: float(r == a),
    )
    assert calls == [(True, 1, None), (False, 4, 0.7)]
    # by hand: greedy 2/3; pass@1 = mean(3/4, 1/4, 0) = 1/3; pass@2 = mean(1, 1 - C(3,2)/C(4,2), 0)
    # = 1/2;
    # pass@4 = mean(1, 1, 0) = 2/3
    assert res["greedy"] == pytest.approx(2 / 3, abs=1e-15)
    assert res["pass@1"] == pytest.approx(1 / 3, abs=1e-15)
    assert res["pass@2"] == pytest.approx(1 / 2, abs=1e-15)
    assert res["pass@4"] == pytest.approx(2 / 3, abs=1e-15)
    assert res["n_problems"] == 3 and res["n_samples"] == 4
    assert res["per_problem"] == [
        {"greedy_correct": True, "correct": 3},
        {"greedy_correct": False, "correct": 1},
        {"greedy_correct": True, "correct": 0},
    ]
    assert res["generated_tokens"] == 3 * 1 + 3 * (1 + 2 + 3 + 4)
    # shards recombine: summarize over concatenated per-problem lists gives the same numbers
    again = E.summarize(res["per_problem"][:1] + res["per_problem"][1:], (1, 2, 4), 4)
    assert all(again[k] == res[k] for k in again)


def test_evaluate_on_tiny_model_matches_its_own_generations(tiny):
    model, tok = tiny
    problems = ["1+1?", "Compute $2^{10}$.", "What is 7*6?"]
    answers = ["2", "1024", "42"]
    recorded = []

    def recording_generate(*a, **kw):
        out = E.generate(*a, **kw)
        recorded.append((kw["greedy"], kw["num_samples"], out))
        return out

    def reward(
        response, answer
    ):  # deterministic in the text: "correct" when the text has an even length
        return float(len(response) % 2 == 0)

    n, ks = 4, (1, 2, 4)
    torch.manual_seed(0)
    res = E.evaluate(
        model,
        tok,
        problems,
        answers,
        n=n,
        ks=ks,
        max_new_tokens=3,
        batch_size=5,
        progress=False,
        generate_fn=recording_generate,
        reward_fn=reward,
    )
    (g_flag, g_n, g_out), (s_flag, s_n, s_out) = recorded
    assert (
        (g_flag, g_n, s_flag, s_n) == (True, 1, False, n)
        and len(g_out) == 3
        and len(s_out) == 3 * n
    )
    greedy_ok = [len(o["text"]) % 2 == 0 for o in g_out]
    counts = [sum(len(o["text"]) % 2 == 0 for o in s_out[i * n : (i + 1) * n]) for i in range(3)]
    assert [p["correct"] for p in res["per_problem"]] == counts
    assert [p["greedy_correct"] for p in res["per_problem"]] == greedy_ok
    assert res["greedy"] == pytest.approx(sum(greedy_ok) / 3, abs=1e-15)
    for k in ks:
        by_hand = sum(1 - Fraction(math.comb(n - c, k), math.comb(n, k)) for c in counts) / 3
        assert res[f"pass@{k}"] == pytest.approx(float(by_hand), abs=1e-15)
    assert res["generated_tokens"] == sum(len(o["completion_ids"]) for o in g_out + s_out)


def test_evaluate_skips_k_above_n_and_n_zero_is_greedy_only(qwen_tokenizer):
    def stub(model, tokenizer, prompts, num_samples=1, greedy=False, **kw):
        return [{"text": "1"} for _ in range(len(prompts) * num_samples)]

    with pytest.warns(UserWarning, match="pass@8"):
        res = E.evaluate(
            None,
            qwen_tokenizer,
            ["q"],
            ["1"],
            n=4,
            ks=(1, 8),
            progress=False,
            generate_fn=stub,
            reward_fn=lambda r, a: 1.0,
        )
    assert "pass@8" not in res and res["pass@1"] == 1.0
    res = E.evaluate(
        None,
        qwen_tokenizer,
        ["q"],
        ["2"],
        n=0,
        progress=False,
        generate_fn=stub,
        reward_fn=lambda r, a: float(r == a),
    )
    assert (
        res["greedy"] == 0.0
        and not any(k.startswith("pass@") for k in res)
        and res["n_samples"] == 0
    )
    # summarize (what hdpo.py calls after gathering shards) leaves out k > n and copes with an empty
    # shard
    assert E.summarize(res["per_problem"], (4, 8), 0) == {
        "greedy": 0.0,
        "n_problems": 1,
        "n_samples": 0,
        "skipped_long_prompts": 0,
    }
    assert E.summarize([], (1,), 4) == {
        "greedy": None,
        "pass@1": None,
        "n_problems": 0,
        "n_samples": 4,
        "skipped_long_prompts": 0,
    }


# ----------------------------------------------------------------------------- CLI


@pytest.fixture
def stub_verify(monkeypatch):
    """The CLI scores with verify.reward; give it a simple one so these tests do not depend on
    verify.py."""
    import types

    mod = types.ModuleType("verify")
    mod.reward = lambda response, answer: float(answer in response)
    mod.verify = lambda response, answer: answer in response
    monkeypatch.setitem(sys.modules, "verify", mod)


def test_cli_end_to_end_writes_json(tiny_qwen_dir, tmp_path, capsys, stub_verify):
    out = tmp_path / "r.json"
    rc = E.main(
        [
            "--model",
            tiny_qwen_dir,
            "--dataset",
            os.path.join(DATA, "gsm8k_test.jsonl"),
            "--limit",
            "3",
            "--n",
            "4",
            "--max-new-tokens",
            "3",
            "--batch-size",
            "4",
            "--output",
            str(out),
            "--no-progress",
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    res = json.loads(out.read_text())
    for key in (
        "greedy",
        "pass@1",
        "pass@4",
        "n_problems",
        "n_samples",
        "model",
        "dataset",
        "tokens_per_second",
    ):
        assert key in res
    assert "pass@8" not in res  # default --k 1 4 8 keeps the k that fit --n 4
    assert res["n_problems"] == 3 and res["n_samples"] == 4 and res["model"] == tiny_qwen_dir
    assert 0 < res["generated_tokens"] <= 3 * 3 + 3 * 4 * 3
    printed = capsys.readouterr().out
    assert "pass@4" in printed and "tokens/s" in printed


def run_cli(*args):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "eval.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )


@pytest.mark.slow
def test_cli_missing_model_one_line_error():
    r = run_cli(
        "--model",
        "no-such-org/no-such-model",
        "--dataset",
        os.path.join(DATA, "math500.jsonl"),
        "--limit",
        "1",
    )
    assert r.returncode == 1
    err = [line for line in r.stderr.splitlines() if line.startswith("eval.py: error:")]
    assert len(err) == 1 and "Traceback" not in r.stderr
    assert "offline" in err[0] and "--model /path/to/folder" in err[0]


def test_cli_missing_local_model_folder_one_line_error(tmp_path, capsys):
    assert (
        E.main(
            [
                "--model",
                str(tmp_path / "nope"),
                "--dataset",
                os.path.join(DATA, "math500.jsonl"),
                "--limit",
                "1",
            ]
        )
        == 1
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot load model" in err[0] and "local folder" in err[0]


def test_cli_bad_dataset_one_line_error_and_debug_traceback(tmp_path, capsys):
    bad = write_jsonl(tmp_path / "d.jsonl", [{"problem": "a", "answer": "1"}, {"problem": "b"}])
    empty = tmp_path / "e.jsonl"
    empty.write_text("")
    for path, msg in ((bad, "row 1"), (str(empty), "is empty")):
        assert E.main(["--model", "unused", "--dataset", path]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and msg in err[0]
    with pytest.raises(DataError):
        E.main(["--model", "unused", "--dataset", bad, "--debug"])


@pytest.mark.parametrize(
    "flags",
    [
        ["--n", "-1"],
        ["--k", "0"],
        ["--temperature", "0"],
        ["--temperature", "x"],
        ["--batch-size", "0"],
        ["--limit", "0"],
        ["--max-new-tokens", "0"],
        ["--n", "4", "--k", "1", "8"],
    ],
)
def test_cli_invalid_flags_argparse_error(flags, capsys):
    with pytest.raises(SystemExit) as e:
        E.main(["--model", "m", "--dataset", "d.jsonl", *flags])
    assert e.value.code == 2
    assert "usage:" in capsys.readouterr().err
