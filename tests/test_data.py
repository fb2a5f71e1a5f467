"""Tests for data.py: dataset loading, schemas, one-line data errors, the chat prompt."""

import json
import os

import pytest
from conftest import DATA

import data as D

TOKENIZER_DIR = os.path.join(DATA, "qwen2.5-math-1.5b")
ENDOFTEXT, IM_END = 151643, 151645


@pytest.fixture(scope="module")
def qwen_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return str(path)


# ----------------------------------------------------------------------------- data


def test_math500_answer_column_not_solution():
    rows = D.load_problems(os.path.join(DATA, "math500.jsonl"), limit=3)
    assert len(rows) == 3
    assert rows[0]["answer"] == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert rows[0]["problem"].startswith("Convert the point $(0,3)$")
    assert "\\boxed" in rows[0]["solution"]


def test_gsm8k_answer_reduced_to_number(tmp_path):
    path = os.path.join(DATA, "gsm8k_test.jsonl")
    rows = D.load_problems(path, limit=20)
    with open(path) as f:
        raw = [json.loads(next(f)) for _ in range(20)]
    for row, r in zip(rows, raw):
        assert row["problem"] == r["question"]
        assert row["answer"] == r["answer"].split("####")[-1].strip().replace(",", "")
        assert "####" not in row["answer"] and "####" not in row["solution"]
        assert row["solution"] == r["answer"].split("####")[0].strip()
    assert rows[0]["answer"] == "18"
    p = write_jsonl(tmp_path / "g.jsonl", [{"question": "q", "answer": "a lot\n#### 1,234,567"}])
    assert D.load_problems(p)[0]["answer"] == "1234567"


def test_openmathinstruct2_schema():
    rows = D.load_problems(os.path.join(DATA, "openmathinstruct2_sample.jsonl"), limit=2)
    assert rows[0]["problem"].startswith("Ava is planning a camping trip")
    assert rows[0]["answer"] == "45"
    assert rows[0]["solution"] is not None and "45" in rows[0]["solution"]


def test_limit_keeps_first_rows():
    assert len(D.load_problems(os.path.join(DATA, "gsm8k_test.jsonl"), limit=5)) == 5
    assert len(D.load_problems(os.path.join(DATA, "math500.jsonl"))) == 500


def test_key_overrides_and_json_and_parquet_files(tmp_path):
    from datasets import Dataset

    rows = [
        {"q_text": "one plus one", "gold": 2, "other": "x"},
        {"q_text": "two plus two", "gold": 4, "other": "y"},
    ]
    jpath = tmp_path / "d.json"
    jpath.write_text(json.dumps(rows))
    ppath = str(tmp_path / "d.parquet")
    Dataset.from_list(rows).to_parquet(ppath)
    for path in (str(jpath), ppath):
        got = D.load_problems(path, problem_key="q_text", answer_key="gold")
        assert got == [
            {"problem": "one plus one", "answer": "2", "solution": None},
            {"problem": "two plus two", "answer": "4", "solution": None},
        ]
    with pytest.raises(D.DataError, match=r"no problem column.*q_text, gold, other"):
        D.load_problems(ppath)
    with pytest.raises(D.DataError, match="no column 'nope'"):
        D.load_problems(ppath, problem_key="nope")


def test_row_without_answer_names_the_row(tmp_path):
    p = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"problem": "a", "answer": "1"},
            {"problem": "b", "answer": "2"},
            {"problem": "c"},
            {"problem": "d", "answer": "4"},
        ],
    )
    with pytest.raises(D.DataError, match=r"row 2 .*no answer"):
        D.load_problems(p)


def test_row_without_problem_names_the_row(tmp_path):
    p = write_jsonl(
        tmp_path / "d.jsonl", [{"problem": "a", "answer": "1"}, {"problem": "  ", "answer": "2"}]
    )
    with pytest.raises(D.DataError, match=r"row 1 .*no problem"):
        D.load_problems(p)


def test_empty_dataset_is_a_clear_error(tmp_path):
    for name, text in (("empty.jsonl", ""), ("blank.jsonl", "\n\n")):
        (tmp_path / name).write_text(text)
        with pytest.raises(D.DataError, match="is empty"):
            D.load_problems(str(tmp_path / name))


def test_missing_file_and_unreachable_hub_are_data_errors(monkeypatch):
    with pytest.raises(D.DataError, match="does not exist"):
        D.load_problems("/no/such/file.jsonl")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(D.DataError, match="offline"):
        D.load_problems("HuggingFaceH4/MATH-500")


# ----------------------------------------------------------------------------- prompts and EOS


def test_chat_prompt_is_qwen25_math_cot(qwen_tokenizer):
    with open(os.path.join(DATA, "qwen25_math_prompts.json")) as f:
        cot = json.load(f)["qwen25-math-cot"]
    assert D.SYSTEM_PROMPT == cot["system"]
    assert D.QWEN25_MATH_COT_TEMPLATE == cot["input_template"]
    problem = "Find $x$ if $\\{x\\} = 1$ and {input} appears."
    expected = cot["input_template"].replace("{input}", problem)
    assert D.chat_prompt(qwen_tokenizer, problem) == expected


def test_chat_prompt_fallbacks():
    class NoTemplate:
        chat_template = None

    problem = "What is {0} + {}?"
    assert D.chat_prompt(NoTemplate(), problem) == D.QWEN25_MATH_COT_TEMPLATE.replace(
        "{input}", problem
    )

    class RejectsSystem:
        chat_template = "x"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            if any(m["role"] == "system" for m in messages):
                raise ValueError("System role not supported")
            return "|".join(m["content"] for m in messages)

    assert D.chat_prompt(RejectsSystem(), "2+2?") == D.SYSTEM_PROMPT + "\n\n2+2?"


# ----------------------------------------------------------------------------- train/val split


def test_split_holds_out_whole_problems():
    """Rows repeat problems (OpenMathInstruct-2 has one row per generated solution): no problem
    text is on both sides, validation has one row per held-out problem, 5% of the distinct
    problems are held out, and the split is a function of the seed."""
    rows = [
        {"problem": f"p{i % 40}", "answer": str(i % 40), "solution": f"s{i}"} for i in range(200)
    ]
    train, val = D.split_train_val(rows, 0.05, 2048, seed=42)
    train_problems, val_problems = {r["problem"] for r in train}, [r["problem"] for r in val]
    assert not train_problems & set(val_problems)
    assert len(val_problems) == len(set(val_problems)) == 2  # round(0.05 * 40 distinct)
    assert len(train) == 200 - 2 * 5  # every row of a held-out problem left training
    assert D.split_train_val(rows, 0.05, 2048, seed=42) == (train, val)
    assert D.split_train_val(rows, 0.05, 1, seed=42)[1] == val[:1]  # capped, same order


def test_split_of_the_bundled_openmathinstruct2_sample_keeps_problems_apart():
    rows = D.load_problems(os.path.join(DATA, "openmathinstruct2_sample.jsonl"))
    distinct = {r["problem"] for r in rows}
    assert len(distinct) < len(rows)  # the sample repeats problems across rows
    train, val = D.split_train_val(rows, 0.05, 2048, seed=42)
    assert not {r["problem"] for r in train} & {r["problem"] for r in val}
    assert len(val) == round(0.05 * len(distinct))


def test_load_problems_can_leave_solutions_out():
    path = os.path.join(DATA, "openmathinstruct2_sample.jsonl")
    with_sol = D.load_problems(path, limit=3)
    without = D.load_problems(path, limit=3, with_solutions=False)
    assert all(r["solution"] for r in with_sol) and all(r["solution"] is None for r in without)
    assert [r["problem"] for r in without] == [r["problem"] for r in with_sol]
