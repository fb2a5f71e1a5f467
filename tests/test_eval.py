"""Tests for eval.py: pass@k, data loading, prompts, generation, the evaluator and the CLI."""
import itertools
import json
import math
import os
import subprocess
import sys
from fractions import Fraction

import pytest
import torch

import eval as E
from conftest import DATA, ROOT

TOKENIZER_DIR = os.path.join(DATA, "qwen2.5-math-1.5b")
ENDOFTEXT, IM_END = 151643, 151645


@pytest.fixture(scope="module")
def qwen_tokenizer():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


@pytest.fixture(scope="module")
def tiny(tiny_qwen_dir):
    return E.load_model(tiny_qwen_dir, device="cpu")


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
                assert E.pass_at_k(n, c, k) == pytest.approx(float(brute_force_pass_at_k(n, c, k)), rel=1e-14, abs=0)


def test_pass_at_k_matches_exact_integer_arithmetic_up_to_n_1024():
    worst = 0.0
    ns = [16, 17, 64, 100, 255, 512, 1000, 1023, 1024]
    for n in ns:
        cs = sorted({0, 1, 2, 3, n // 7, n // 3, n // 2, n - 64, n - 9, n - 8, n - 2, n - 1, n} & set(range(n + 1)))
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
    assert E.pass_at_k(8, 1, 8) == 1.0            # every 8-subset of 8 holds the correct one
    assert E.pass_at_k(8, 3, 1) == pytest.approx(3 / 8, rel=1e-15)
    assert E.pass_at_k(1024, 1, 1) == pytest.approx(1 / 1024, rel=1e-15)  # no cancellation near 0


def test_pass_at_k_n_less_than_k_is_a_clear_error():
    with pytest.raises(ValueError, match=r"n=3 < k=4"):
        E.pass_at_k(3, 1, 4)
    with pytest.raises(ValueError, match="k must be >= 1"):
        E.pass_at_k(3, 1, 0)
    with pytest.raises(ValueError, match="c=5"):
        E.pass_at_k(4, 5, 1)


# ----------------------------------------------------------------------------- data

def test_math500_answer_column_not_solution():
    rows = E.load_problems(os.path.join(DATA, "math500.jsonl"), limit=3)
    assert len(rows) == 3
    assert rows[0]["answer"] == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert rows[0]["problem"].startswith("Convert the point $(0,3)$")
    assert "\\boxed" in rows[0]["solution"]


def test_gsm8k_answer_reduced_to_number(tmp_path):
    path = os.path.join(DATA, "gsm8k_test.jsonl")
    rows = E.load_problems(path, limit=20)
    with open(path) as f:
        raw = [json.loads(next(f)) for _ in range(20)]
    for row, r in zip(rows, raw):
        assert row["problem"] == r["question"]
        assert row["answer"] == r["answer"].split("####")[-1].strip().replace(",", "")
        assert "####" not in row["answer"] and "####" not in row["solution"]
        assert row["solution"] == r["answer"].split("####")[0].strip()
    assert rows[0]["answer"] == "18"
    p = write_jsonl(tmp_path / "g.jsonl", [{"question": "q", "answer": "a lot\n#### 1,234,567"}])
    assert E.load_problems(p)[0]["answer"] == "1234567"


def test_openmathinstruct2_schema():
    rows = E.load_problems(os.path.join(DATA, "openmathinstruct2_sample.jsonl"), limit=2)
    assert rows[0]["problem"].startswith("Ava is planning a camping trip")
    assert rows[0]["answer"] == "45"
    assert rows[0]["solution"] is not None and "45" in rows[0]["solution"]


def test_limit_keeps_first_rows():
    assert len(E.load_problems(os.path.join(DATA, "gsm8k_test.jsonl"), limit=5)) == 5
    assert len(E.load_problems(os.path.join(DATA, "math500.jsonl"))) == 500


def test_key_overrides_and_json_and_parquet_files(tmp_path):
    from datasets import Dataset
    rows = [{"q_text": "one plus one", "gold": 2, "other": "x"}, {"q_text": "two plus two", "gold": 4, "other": "y"}]
    jpath = tmp_path / "d.json"
    jpath.write_text(json.dumps(rows))
    ppath = str(tmp_path / "d.parquet")
    Dataset.from_list(rows).to_parquet(ppath)
    for path in (str(jpath), ppath):
        got = E.load_problems(path, problem_key="q_text", answer_key="gold")
        assert got == [{"problem": "one plus one", "answer": "2", "solution": None},
                       {"problem": "two plus two", "answer": "4", "solution": None}]
    with pytest.raises(E.DataError, match=r"no problem column.*q_text, gold, other"):
        E.load_problems(ppath)
    with pytest.raises(E.DataError, match="no column 'nope'"):
        E.load_problems(ppath, problem_key="nope")


def test_row_without_answer_names_the_row(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", [{"problem": "a", "answer": "1"}, {"problem": "b", "answer": "2"},
                                           {"problem": "c"}, {"problem": "d", "answer": "4"}])
    with pytest.raises(E.DataError, match=r"row 2 .*no answer"):
        E.load_problems(p)


def test_row_without_problem_names_the_row(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", [{"problem": "a", "answer": "1"}, {"problem": "  ", "answer": "2"}])
    with pytest.raises(E.DataError, match=r"row 1 .*no problem"):
        E.load_problems(p)


def test_empty_dataset_is_a_clear_error(tmp_path):
    for name, text in (("empty.jsonl", ""), ("blank.jsonl", "\n\n")):
        (tmp_path / name).write_text(text)
        with pytest.raises(E.DataError, match="is empty"):
            E.load_problems(str(tmp_path / name))


def test_missing_file_and_unreachable_hub_are_data_errors(monkeypatch):
    with pytest.raises(E.DataError, match="does not exist"):
        E.load_problems("/no/such/file.jsonl")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(E.DataError, match="offline"):
        E.load_problems("HuggingFaceH4/MATH-500")


# ----------------------------------------------------------------------------- prompts and EOS

def test_chat_prompt_is_qwen25_math_cot(qwen_tokenizer):
    with open(os.path.join(DATA, "qwen25_math_prompts.json")) as f:
        cot = json.load(f)["qwen25-math-cot"]
    assert E.SYSTEM_PROMPT == cot["system"]
    assert E.QWEN25_MATH_COT_TEMPLATE == cot["input_template"]
    problem = "Find $x$ if $\\{x\\} = 1$ and {input} appears."
    expected = cot["input_template"].replace("{input}", problem)
    assert E.chat_prompt(qwen_tokenizer, problem) == expected


def test_chat_prompt_fallbacks():
    class NoTemplate:
        chat_template = None
    problem = "What is {0} + {}?"
    assert E.chat_prompt(NoTemplate(), problem) == E.QWEN25_MATH_COT_TEMPLATE.replace("{input}", problem)

    class RejectsSystem:
        chat_template = "x"
        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            if any(m["role"] == "system" for m in messages):
                raise ValueError("System role not supported")
            return "|".join(m["content"] for m in messages)
    assert E.chat_prompt(RejectsSystem(), "2+2?") == E.SYSTEM_PROMPT + "\n\n2+2?"


def test_eos_token_ids_union(qwen_tokenizer):
    class M:
        class generation_config:
            eos_token_id = [ENDOFTEXT, 7]
    assert E.eos_token_ids(qwen_tokenizer) == [ENDOFTEXT, IM_END]
    assert E.eos_token_ids(qwen_tokenizer, M()) == [ENDOFTEXT, 7, IM_END]


# ----------------------------------------------------------------------------- generation (stub model)

class ScriptedLM(torch.nn.Module):
    """Stands in for a HF model: generate() appends scripted tokens row by row, then pads finished rows
    with pad_token_id exactly as transformers does. Records what it was called with."""

    def __init__(self, scripts):
        super().__init__()
        from transformers import GenerationConfig
        self.scripts = scripts  # list of token lists, one per row of the (single) batch
        self.generation_config = GenerationConfig(do_sample=True, top_k=20, top_p=0.8, repetition_penalty=1.1,
                                                  temperature=0.7)
        self.calls = []
        self.train()

    @property
    def device(self):
        return torch.device("cpu")

    def generate(self, input_ids, attention_mask, generation_config):
        self.calls.append({"input_ids": input_ids.clone(), "attention_mask": attention_mask.clone(),
                           "config": generation_config, "training": self.training,
                           "grad": torch.is_grad_enabled(), "model_config": self.generation_config})
        scripts = self.scripts[:input_ids.shape[0]]
        width = max(len(s) for s in scripts)
        new = torch.full((input_ids.shape[0], width), generation_config.pad_token_id, dtype=torch.long)
        for r, s in enumerate(scripts):
            new[r, :len(s)] = torch.tensor(s)
        return torch.cat([input_ids, new], dim=1)


def test_completion_mask_includes_first_eos_when_pad_is_eos(qwen_tokenizer):
    assert qwen_tokenizer.pad_token_id == qwen_tokenizer.eos_token_id == ENDOFTEXT
    # row 0 stops after 2 tokens (EOS, then pads which are the same id); row 1 never stops;
    # row 2 stops on <|im_end|> and is padded with <|endoftext|>; row 3 emits EOS first.
    model = ScriptedLM([[11, 12, ENDOFTEXT], [21, 22, 23, 24, 25], [31, IM_END], [ENDOFTEXT]])
    prompts = ["Hello there, a longer prompt", "Hi", "Hey you", "Yo"]
    out = E.generate(model, qwen_tokenizer, prompts, max_new_tokens=5, batch_size=8)
    # generate() packs longest prompts first; map outputs back through the prompt lengths
    by_row = {tuple(o["prompt_ids"]): o for o in out}
    order = sorted(range(4), key=lambda i: -len(qwen_tokenizer(prompts[i], add_special_tokens=False)["input_ids"]))
    expect = {order[0]: ([11, 12, ENDOFTEXT], True), order[1]: ([21, 22, 23, 24, 25], False),
              order[2]: ([31, IM_END], True), order[3]: ([ENDOFTEXT], True)}
    for i, p in enumerate(prompts):
        o = by_row[tuple(qwen_tokenizer(p, add_special_tokens=False)["input_ids"])]
        assert (o["completion_ids"], o["finished"]) == expect[i]
        assert out[i] is o  # prompt-major order restored
    row0 = out[order[0]]
    assert row0["completion_ids"][-1] == ENDOFTEXT and row0["completion_ids"].count(ENDOFTEXT) == 1
    assert out[order[0]]["text"] == qwen_tokenizer.decode([11, 12])
    # left padding with an attention mask that covers exactly the prompt tokens
    call = model.calls[0]
    ids, mask = call["input_ids"], call["attention_mask"]
    for r in range(4):
        n_pad = int((mask[r] == 0).sum())
        assert mask[r, n_pad:].all() and (ids[r, :n_pad] == qwen_tokenizer.pad_token_id).all()
    assert int((mask[0] == 0).sum()) == 0  # the longest prompt is unpadded


def test_generation_config_is_explicit_and_model_defaults_do_not_leak(qwen_tokenizer):
    model = ScriptedLM([[1, 2]] * 3)
    saved = model.generation_config
    E.generate(model, qwen_tokenizer, ["a", "b", "c"], num_samples=1, temperature=0.6, max_new_tokens=7, batch_size=3)
    call = model.calls[0]
    cfg = call["config"]
    assert cfg.do_sample is True and cfg.temperature == 0.6 and cfg.top_k == 0 and cfg.top_p == 1.0
    assert cfg.repetition_penalty == 1.0 and cfg.max_new_tokens == 7 and cfg.use_cache is True
    assert cfg.pad_token_id == ENDOFTEXT and cfg.eos_token_id == [ENDOFTEXT, IM_END]
    assert call["model_config"] is cfg  # nothing from the checkpoint's config can fill unset fields
    assert call["training"] is False and call["grad"] is False
    assert model.generation_config is saved and model.training  # restored afterwards
    E.generate(model, qwen_tokenizer, ["a"], greedy=True, max_new_tokens=3)
    assert model.calls[1]["config"].do_sample is False


def test_sampling_ignores_model_top_k_and_top_p(tiny):
    model, tok = tiny
    saved = model.generation_config
    model.generation_config = type(saved).from_dict({**saved.to_dict(), "do_sample": False, "top_k": 1,
                                                     "top_p": 0.01, "repetition_penalty": 5.0, "temperature": 0.01})
    try:
        torch.manual_seed(0)
        out = E.generate(model, tok, [E.chat_prompt(tok, "1+1?")], num_samples=16, max_new_tokens=1, batch_size=16)
    finally:
        model.generation_config = saved
    firsts = [o["completion_ids"][0] for o in out]
    # a random 151,936-token model at T=1 almost never repeats a token in 16 draws; top_k=1 would give 1 distinct
    assert len(set(firsts)) >= 12


def test_max_seq_len_caps_new_tokens_and_rejects_long_prompts(qwen_tokenizer):
    model = ScriptedLM([[5, 6, 7, 8, 9, 10]])
    p = "one two three"
    n_prompt = len(qwen_tokenizer(p, add_special_tokens=False)["input_ids"])
    E.generate(model, qwen_tokenizer, [p], max_new_tokens=100, max_seq_len=n_prompt + 4)
    assert model.calls[0]["config"].max_new_tokens == 4
    with pytest.raises(ValueError, match="prompt 1 is"):
        E.generate(model, qwen_tokenizer, ["a", p], max_new_tokens=5, max_seq_len=n_prompt)


# ----------------------------------------------------------------------------- generation (tiny real model)

def test_batched_left_padded_greedy_matches_one_by_one(tiny):
    model, tok = tiny
    prompts = [E.chat_prompt(tok, q) for q in ("2+2?", "What is the sum of the first ten positive integers, please?",
                                               "Let $x=3$. Find $x^2$.")]
    batched = E.generate(model, tok, prompts, greedy=True, max_new_tokens=6, batch_size=3)
    for p, b in zip(prompts, batched):
        single = E.generate(model, tok, [p], greedy=True, max_new_tokens=6, batch_size=1)[0]
        assert single["completion_ids"] == b["completion_ids"]
        assert b["prompt_ids"] == tok(p, add_special_tokens=False)["input_ids"]


def test_real_model_cut_at_first_eos(tiny):
    model, tok = tiny
    prompts = [E.chat_prompt(tok, "Count: 1, 2, 3"), E.chat_prompt(tok, "x")]
    torch.manual_seed(1)
    free = E.generate(model, tok, prompts, max_new_tokens=6, eos_ids=[-5])  # an id that never comes
    assert all(len(o["completion_ids"]) == 6 and not o["finished"] for o in free)
    toks = free[0]["completion_ids"]
    stop = toks[2]
    assert stop not in toks[:2]
    torch.manual_seed(1)
    cut = E.generate(model, tok, prompts, max_new_tokens=6, eos_ids=[stop])  # same RNG draws until the stop
    assert cut[0]["completion_ids"] == toks[:3] and cut[0]["finished"]


def test_sampling_reproducible_with_torch_seed(tiny):
    model, tok = tiny
    prompts = [E.chat_prompt(tok, "a"), E.chat_prompt(tok, "bb")]
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        runs.append([o["completion_ids"] for o in E.generate(model, tok, prompts, num_samples=3, max_new_tokens=4,
                                                             batch_size=4)])
    assert runs[0] == runs[1]
    assert len(runs[0]) == 6


# ----------------------------------------------------------------------------- evaluate

def test_evaluate_matches_hand_computed_numbers(qwen_tokenizer):
    problems = ["P0: 1+2?", "P1: 2+2?", "P2: 3+3?"]
    answers = ["3", "4", "6"]
    greedy_text = {"P0": "3", "P1": "5", "P2": "6"}                    # greedy: 2 of 3 right
    sample_text = {"P0": ["3", "3", "1", "3"],                         # c = 3
                   "P1": ["0", "4", "1", "2"],                         # c = 1
                   "P2": ["0", "0", "0", "0"]}                         # c = 0
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

    res = E.evaluate(None, qwen_tokenizer, problems, answers, n=4, ks=(1, 2, 4), temperature=0.7,
                     progress=False, generate_fn=stub_generate, reward_fn=lambda r, a: float(r == a))
    assert calls == [(True, 1, None), (False, 4, 0.7)]
    # by hand: greedy 2/3; pass@1 = mean(3/4, 1/4, 0) = 1/3; pass@2 = mean(1, 1 - C(3,2)/C(4,2), 0) = 1/2;
    # pass@4 = mean(1, 1, 0) = 2/3
    assert res["greedy"] == pytest.approx(2 / 3, abs=1e-15)
    assert res["pass@1"] == pytest.approx(1 / 3, abs=1e-15)
    assert res["pass@2"] == pytest.approx(1 / 2, abs=1e-15)
    assert res["pass@4"] == pytest.approx(2 / 3, abs=1e-15)
    assert res["n_problems"] == 3 and res["n_samples"] == 4
    assert res["per_problem"] == [{"greedy_correct": True, "correct": 3}, {"greedy_correct": False, "correct": 1},
                                  {"greedy_correct": True, "correct": 0}]
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

    def reward(response, answer):  # deterministic in the text: "correct" when the text has an even length
        return float(len(response) % 2 == 0)

    n, ks = 4, (1, 2, 4)
    torch.manual_seed(0)
    res = E.evaluate(model, tok, problems, answers, n=n, ks=ks, max_new_tokens=3, batch_size=5,
                     progress=False, generate_fn=recording_generate, reward_fn=reward)
    (g_flag, g_n, g_out), (s_flag, s_n, s_out) = recorded
    assert (g_flag, g_n, s_flag, s_n) == (True, 1, False, n) and len(g_out) == 3 and len(s_out) == 3 * n
    greedy_ok = [len(o["text"]) % 2 == 0 for o in g_out]
    counts = [sum(len(o["text"]) % 2 == 0 for o in s_out[i * n:(i + 1) * n]) for i in range(3)]
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
        res = E.evaluate(None, qwen_tokenizer, ["q"], ["1"], n=4, ks=(1, 8), progress=False, generate_fn=stub,
                         reward_fn=lambda r, a: 1.0)
    assert "pass@8" not in res and res["pass@1"] == 1.0
    res = E.evaluate(None, qwen_tokenizer, ["q"], ["2"], n=0, progress=False, generate_fn=stub,
                     reward_fn=lambda r, a: float(r == a))
    assert res["greedy"] == 0.0 and not any(k.startswith("pass@") for k in res) and res["n_samples"] == 0
    # summarize (what hdpo.py calls after gathering shards) leaves out k > n and copes with an empty shard
    assert E.summarize(res["per_problem"], (4, 8), 0) == {"greedy": 0.0, "n_problems": 1, "n_samples": 0}
    assert E.summarize([], (1,), 4) == {"greedy": None, "pass@1": None, "n_problems": 0, "n_samples": 4}


# ----------------------------------------------------------------------------- CLI

@pytest.fixture
def stub_verify(monkeypatch):
    """The CLI scores with verify.reward; give it a simple one so these tests do not depend on verify.py."""
    import types
    mod = types.ModuleType("verify")
    mod.reward = lambda response, answer: float(answer in response)
    mod.verify = lambda response, answer: answer in response
    monkeypatch.setitem(sys.modules, "verify", mod)


def test_cli_end_to_end_writes_json(tiny_qwen_dir, tmp_path, capsys, stub_verify):
    out = tmp_path / "r.json"
    rc = E.main(["--model", tiny_qwen_dir, "--dataset", os.path.join(DATA, "gsm8k_test.jsonl"), "--limit", "3",
                 "--n", "4", "--max-new-tokens", "3", "--batch-size", "4", "--output", str(out),
                 "--no-progress", "--device", "cpu"])
    assert rc == 0
    res = json.loads(out.read_text())
    for key in ("greedy", "pass@1", "pass@4", "n_problems", "n_samples", "model", "dataset", "tokens_per_second"):
        assert key in res
    assert "pass@8" not in res  # default --k 1 4 8 keeps the k that fit --n 4
    assert res["n_problems"] == 3 and res["n_samples"] == 4 and res["model"] == tiny_qwen_dir
    assert 0 < res["generated_tokens"] <= 3 * 3 + 3 * 4 * 3
    printed = capsys.readouterr().out
    assert "pass@4" in printed and "tokens/s" in printed


def run_cli(*args):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return subprocess.run([sys.executable, os.path.join(ROOT, "eval.py"), *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120)


def test_cli_missing_model_one_line_error():
    r = run_cli("--model", "no-such-org/no-such-model", "--dataset", os.path.join(DATA, "math500.jsonl"),
                "--limit", "1")
    assert r.returncode == 1
    err = [line for line in r.stderr.splitlines() if line.startswith("eval.py: error:")]
    assert len(err) == 1 and "Traceback" not in r.stderr
    assert "offline" in err[0] and "--model /path/to/folder" in err[0]


def test_cli_missing_local_model_folder_one_line_error(tmp_path, capsys):
    assert E.main(["--model", str(tmp_path / "nope"), "--dataset", os.path.join(DATA, "math500.jsonl"),
                   "--limit", "1"]) == 1
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
    with pytest.raises(E.DataError):
        E.main(["--model", "unused", "--dataset", bad, "--debug"])


@pytest.mark.parametrize("flags", [["--n", "-1"], ["--k", "0"], ["--temperature", "0"], ["--temperature", "x"],
                                   ["--batch-size", "0"], ["--limit", "0"], ["--max-new-tokens", "0"],
                                   ["--n", "4", "--k", "1", "8"]])
def test_cli_invalid_flags_argparse_error(flags, capsys):
    with pytest.raises(SystemExit) as e:
        E.main(["--model", "m", "--dataset", "d.jsonl", *flags])
    assert e.value.code == 2
    assert "usage:" in capsys.readouterr().err
