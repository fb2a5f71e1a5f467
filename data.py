"""What the model reads: math problems from a dataset, the train/validation split, the prompt
stream, and the chat prompt (the Qwen2.5-Math system prompt in the tokenizer's chat template).

load_problems(dataset) -> [{"problem", "answer", "solution"}, ...] from a hub id or a local
.jsonl/.json/.parquet file (through datasets.load_dataset, imported only when a dataset is
loaded). The privileged prompt x ⊕ y* is hdpo.privileged_prompt.
"""

import os

import numpy as np

from harness.loading import hub_offline, one_line

SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."
# Qwen2.5-Math's `qwen25-math-cot` input template (QwenLM/Qwen2.5-Math evaluation/utils.py),
# rendered. Fill with str.replace("{input}", problem), never str.format (the literal \boxed{}
# would break it).
QWEN25_MATH_COT_TEMPLATE = (
    "<|im_start|>system\n" + SYSTEM_PROMPT + "<|im_end|>\n"
    "<|im_start|>user\n{input}<|im_end|>\n"
    "<|im_start|>assistant\n"
)

PROBLEM_KEYS = ("problem", "question", "prompt")
ANSWER_KEYS = ("expected_answer", "answer")
SOLUTION_KEYS = ("generated_solution", "solution")
LOCAL_EXTENSIONS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
# Hub datasets whose defaults differ from (config=None, split="train").
HUB_DEFAULTS = {
    "openai/gsm8k": {"config": "main"},
    "gsm8k": {"config": "main"},
    "HuggingFaceH4/MATH-500": {"split": "test"},  # the only split it has
}


class DataError(ValueError):
    """A dataset that cannot be used: the message names the dataset and, where it applies, the
    row."""


def _is_local(dataset):
    return (
        os.path.exists(dataset)
        or os.path.splitext(dataset)[1].lower() in LOCAL_EXTENSIONS
        or dataset.startswith((".", "/", "~"))
    )


def _load_dataset(dataset, split=None, config=None):
    import datasets  # here, not at the top: the rest of this module works without it

    if _is_local(dataset):
        path = os.path.expanduser(dataset)
        if not os.path.exists(path):
            raise DataError(f"dataset file {dataset!r} does not exist")
        if os.path.isdir(path):
            try:
                dsd = datasets.load_dataset(path)
            except Exception as e:
                raise DataError(f"cannot load dataset folder {dataset!r}: {one_line(e)}") from e
            split = split or ("train" if "train" in dsd else next(iter(dsd), None))
            if split not in dsd:
                raise DataError(
                    f"dataset folder {dataset!r} has no split {split!r} (it has: "
                    f"{', '.join(dsd) or 'none'})"
                )
            return dsd[split]
        ext = os.path.splitext(path)[1].lower()
        if ext not in LOCAL_EXTENSIONS:
            raise DataError(
                f"dataset file {dataset!r}: unsupported extension {ext or '(none)'!r}; use "
                ".jsonl, .json or .parquet"
            )
        if os.path.getsize(path) == 0 or (ext != ".parquet" and not _has_non_whitespace(path)):
            raise DataError(f"dataset {dataset!r} is empty")
        # A single file has one split, "train"; a `split` argument does not apply to it.
        try:
            return datasets.load_dataset(LOCAL_EXTENSIONS[ext], data_files=path, split="train")
        except Exception as e:
            raise DataError(f"cannot read dataset file {dataset!r}: {one_line(e)}") from e

    defaults = HUB_DEFAULTS.get(dataset, {})
    config = config or defaults.get("config")
    split = split or defaults.get("split", "train")
    try:
        return datasets.load_dataset(dataset, config, split=split)
    except Exception as e:
        offline = hub_offline() or "offline" in str(e).lower() or "connect" in str(e).lower()
        why = (
            (
                "it is not a local file and the Hugging Face hub is unreachable (offline); "
                "download it first or "
                "pass a local .jsonl/.json/.parquet file"
            )
            if offline
            else one_line(e)
        )
        raise DataError(
            f"cannot load dataset {dataset!r} (config {config!r}, split {split!r}): {why}"
        ) from e


def _has_non_whitespace(path):
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 16)
            if not chunk:
                return False
            if chunk.strip():
                return True


def _pick_key(columns, override, candidates, what, dataset, required=True):
    if override is not None:
        if override not in columns:
            raise DataError(
                f"dataset {dataset!r} has no column {override!r} (--{what}-key); columns: "
                f"{', '.join(columns)}"
            )
        return override
    for key in candidates:
        if key in columns:
            return key
    if required:
        raise DataError(
            f"dataset {dataset!r} has no {what} column (looked for {', '.join(candidates)}); "
            f"columns: {', '.join(columns) or 'none'}; name one with --{what}-key"
        )
    return None


def _split_gsm8k(text):
    """GSM8K answer text "...reasoning...\\n#### 1,234" -> ("...reasoning...", "1234")."""
    head, _, tail = text.rpartition("####")
    return head.strip(), tail.strip().replace(",", "")


def load_problems(
    dataset,
    split=None,
    config=None,
    problem_key=None,
    answer_key=None,
    solution_key=None,
    limit=None,
    with_solutions=True,
):
    """Load math problems as [{"problem": str, "answer": str, "solution": str | None}, ...].

    dataset: a hub id (nvidia/OpenMathInstruct-2, HuggingFaceH4/MATH-500, openai/gsm8k -> config
    "main") or a local .jsonl / .json / .parquet file or a folder of them; all go through
    datasets.load_dataset. Keys: problem|question|prompt; expected_answer|answer;
    generated_solution|solution (overridable). GSM8K's "reasoning #### N" answer becomes answer N
    (commas dropped) and solution "reasoning". limit keeps the first `limit` rows;
    with_solutions=False leaves solutions out (None): at 1M rows they are gigabytes per process.
    Raises DataError naming the row for a missing problem or answer, and for an empty dataset.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    ds = _load_dataset(dataset, split=split, config=config)
    if len(ds) == 0:
        raise DataError(f"dataset {dataset!r} is empty")
    columns = list(ds.column_names)
    pk = _pick_key(columns, problem_key, PROBLEM_KEYS, "problem", dataset)
    ak = _pick_key(columns, answer_key, ANSWER_KEYS, "answer", dataset)
    sk = _pick_key(
        columns,
        solution_key,
        tuple(k for k in SOLUTION_KEYS if k != ak),
        "solution",
        dataset,
        required=False,
    )
    sk = sk if with_solutions else None
    if limit is not None and limit < len(ds):
        ds = ds.select(range(limit))
    ds = ds.select_columns([c for c in dict.fromkeys((pk, ak, sk)) if c is not None])
    problems_col = list(ds[pk])
    answers_col = list(ds[ak])
    solutions_col = list(ds[sk]) if sk is not None else [None] * len(problems_col)

    out = []
    for i, (p, a, s) in enumerate(zip(problems_col, answers_col, solutions_col)):
        if p is None or (isinstance(p, str) and not p.strip()):
            raise DataError(
                f"dataset {dataset!r}: row {i} (0-based) has no problem (column {pk!r} is missing "
                "or empty)"
            )
        if a is None or (isinstance(a, str) and not a.strip()):
            raise DataError(
                f"dataset {dataset!r}: row {i} (0-based) has no answer (column {ak!r} is missing "
                "or empty)"
            )
        a = str(a)
        if "####" in a:
            reasoning, a = _split_gsm8k(a)
            if not a:
                raise DataError(
                    f"dataset {dataset!r}: row {i} (0-based) has nothing after '####' in column "
                    f"{ak!r}"
                )
            if s is None and with_solutions:
                s = reasoning or None
        out.append(
            {"problem": str(p), "answer": a.strip(), "solution": None if s is None else str(s)}
        )
    return out


def chat_prompt(tokenizer, user_text):
    """The string fed to the model for one problem: system prompt + user turn + assistant header.

    Uses the tokenizer's chat template with SYSTEM_PROMPT as the system message; if the template
    rejects a system role the system prompt goes in front of the user message; without a chat
    template, Qwen2.5-Math's qwen25-math-cot template (filled with str.replace, not str.format).
    """
    if getattr(tokenizer, "chat_template", None):
        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": user_text},
        ]
        try:
            return tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        except Exception:  # e.g. jinja2 TemplateError "System role not supported"
            merged = [{"role": "user", "content": SYSTEM_PROMPT + "\n\n" + user_text}]
            return tokenizer.apply_chat_template(merged, tokenize=False, add_generation_prompt=True)
    return QWEN25_MATH_COT_TEMPLATE.replace("{input}", user_text)


# Training data: the 95/5 split with the seed, and a deterministic prompt stream (epoch e is a
# fresh permutation seeded with seed + 1 + e), so a checkpoint only needs the stream position.


def split_train_val(rows, val_fraction, eval_problems, seed):
    """Hold out whole problems: rows are grouped by problem text (OpenMathInstruct-2 repeats a
    problem across rows, one per generated solution), a seeded permutation of the distinct
    problems puts val_fraction of them in validation, and every row of those problems leaves the
    training set. -> (training rows, one row per validation problem, at most eval_problems)."""
    first = {}  # problem text -> its first row
    for r in rows:
        first.setdefault(r["problem"], r)
    problems = list(first)  # distinct, in first-seen order
    perm = np.random.default_rng(seed).permutation(len(problems))
    n_val = max(1, int(round(val_fraction * len(problems)))) if len(problems) > 1 else 0
    held_out = {problems[i] for i in perm[:n_val]}
    val = [first[problems[i]] for i in perm[:n_val][:eval_problems]]
    return [r for r in rows if r["problem"] not in held_out], val


def prompt_stream(n_rows, position, count, seed):
    """Indices of `count` prompts starting at `position` of the infinite shuffled stream."""
    out = []
    while len(out) < count:
        epoch, offset = divmod(position, n_rows)
        perm = np.random.default_rng(seed + 1 + epoch).permutation(n_rows)
        take = perm[offset : offset + count - len(out)]
        out += take.tolist()
        position += len(take)
    return out
