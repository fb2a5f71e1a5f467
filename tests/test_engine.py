"""Tests for engine.py: EOS ids, the completion mask, explicit sampling settings, batched
generation."""

import os

import pytest
import torch
from conftest import DATA

import engine as G
from data import chat_prompt
from plumbing import load_model

TOKENIZER_DIR = os.path.join(DATA, "qwen2.5-math-1.5b")
ENDOFTEXT, IM_END = 151643, 151645


@pytest.fixture(scope="module")
def qwen_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


@pytest.fixture(scope="module")
def tiny(tiny_qwen_dir):
    return load_model(tiny_qwen_dir, device="cpu")


# ----------------------------------------------------------------------------- EOS


def test_eos_token_ids_union(qwen_tokenizer):
    class M:
        class generation_config:
            eos_token_id = [ENDOFTEXT, 7]

    assert G.eos_token_ids(qwen_tokenizer) == [ENDOFTEXT, IM_END]
    assert G.eos_token_ids(qwen_tokenizer, M()) == [ENDOFTEXT, 7, IM_END]


# ----------------------------------------------------------------------------- generation (stub
# model)


class ScriptedLM(torch.nn.Module):
    """Stands in for a HF model: generate() appends scripted tokens row by row, then pads finished
    rows with pad_token_id exactly as transformers does. Records what it was called with."""

    def __init__(self, scripts):
        super().__init__()
        from transformers import GenerationConfig

        self.scripts = scripts  # list of token lists, one per row of the (single) batch
        self.generation_config = GenerationConfig(
            do_sample=True, top_k=20, top_p=0.8, repetition_penalty=1.1, temperature=0.7
        )
        self.calls = []
        self.train()

    @property
    def device(self):
        return torch.device("cpu")

    def generate(self, input_ids, attention_mask, generation_config):
        self.calls.append(
            {
                "input_ids": input_ids.clone(),
                "attention_mask": attention_mask.clone(),
                "config": generation_config,
                "training": self.training,
                "grad": torch.is_grad_enabled(),
                "model_config": self.generation_config,
            }
        )
        scripts = self.scripts[: input_ids.shape[0]]
        width = max(len(s) for s in scripts)
        new = torch.full(
            (input_ids.shape[0], width), generation_config.pad_token_id, dtype=torch.long
        )
        for r, s in enumerate(scripts):
            new[r, : len(s)] = torch.tensor(s)
        return torch.cat([input_ids, new], dim=1)


def test_completion_mask_includes_first_eos_when_pad_is_eos(qwen_tokenizer):
    assert qwen_tokenizer.pad_token_id == qwen_tokenizer.eos_token_id == ENDOFTEXT
    # row 0 stops after 2 tokens (EOS, then pads which are the same id); row 1 never stops;
    # row 2 stops on <|im_end|> and is padded with <|endoftext|>; row 3 emits EOS first.
    model = ScriptedLM([[11, 12, ENDOFTEXT], [21, 22, 23, 24, 25], [31, IM_END], [ENDOFTEXT]])
    prompts = ["Hello there, a longer prompt", "Hi", "Hey you", "Yo"]
    out = G.generate(model, qwen_tokenizer, prompts, max_new_tokens=5, batch_size=8)
    # generate() packs longest prompts first; map outputs back through the prompt lengths
    by_row = {tuple(o["prompt_ids"]): o for o in out}
    order = sorted(
        range(4),
        key=lambda i: -len(qwen_tokenizer(prompts[i], add_special_tokens=False)["input_ids"]),
    )
    expect = {
        order[0]: ([11, 12, ENDOFTEXT], True),
        order[1]: ([21, 22, 23, 24, 25], False),
        order[2]: ([31, IM_END], True),
        order[3]: ([ENDOFTEXT], True),
    }
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
    G.generate(
        model,
        qwen_tokenizer,
        ["a", "b", "c"],
        num_samples=1,
        temperature=0.6,
        max_new_tokens=7,
        batch_size=3,
    )
    call = model.calls[0]
    cfg = call["config"]
    assert cfg.do_sample is True and cfg.temperature == 0.6 and cfg.top_k == 0 and cfg.top_p == 1.0
    assert cfg.repetition_penalty == 1.0 and cfg.max_new_tokens == 7 and cfg.use_cache is True
    assert cfg.pad_token_id == ENDOFTEXT and cfg.eos_token_id == [ENDOFTEXT, IM_END]
    assert call["model_config"] is cfg  # nothing from the checkpoint's config can fill unset fields
    assert call["training"] is False and call["grad"] is False
    assert model.generation_config is saved and model.training  # restored afterwards
    G.generate(model, qwen_tokenizer, ["a"], greedy=True, max_new_tokens=3)
    assert model.calls[1]["config"].do_sample is False


def test_sampling_ignores_model_top_k_and_top_p(tiny):
    model, tok = tiny
    saved = model.generation_config
    model.generation_config = type(saved).from_dict(
        {
            **saved.to_dict(),
            "do_sample": False,
            "top_k": 1,
            "top_p": 0.01,
            "repetition_penalty": 5.0,
            "temperature": 0.01,
        }
    )
    try:
        torch.manual_seed(0)
        out = G.generate(
            model, tok, [chat_prompt(tok, "1+1?")], num_samples=16, max_new_tokens=1, batch_size=16
        )
    finally:
        model.generation_config = saved
    firsts = [o["completion_ids"][0] for o in out]
    # a random 151,936-token model at T=1 almost never repeats a token in 16 draws; top_k=1 would
    # give 1 distinct
    assert len(set(firsts)) >= 12


def test_max_seq_len_caps_new_tokens_and_rejects_long_prompts(qwen_tokenizer):
    model = ScriptedLM([[5, 6, 7, 8, 9, 10]])
    p = "one two three"
    n_prompt = len(qwen_tokenizer(p, add_special_tokens=False)["input_ids"])
    G.generate(model, qwen_tokenizer, [p], max_new_tokens=100, max_seq_len=n_prompt + 4)
    assert model.calls[0]["config"].max_new_tokens == 4
    with pytest.raises(ValueError, match="prompt 1 is"):
        G.generate(model, qwen_tokenizer, ["a", p], max_new_tokens=5, max_seq_len=n_prompt)


# ----------------------------------------------------------------------------- generation (tiny
# real model)


def test_batched_left_padded_greedy_matches_one_by_one(tiny):
    model, tok = tiny
    prompts = [
        chat_prompt(tok, q)
        for q in (
            "2+2?",
            "What is the sum of the first ten positive integers, please?",
            "Let $x=3$. Find $x^2$.",
        )
    ]
    batched = G.generate(model, tok, prompts, greedy=True, max_new_tokens=6, batch_size=3)
    for p, b in zip(prompts, batched):
        single = G.generate(model, tok, [p], greedy=True, max_new_tokens=6, batch_size=1)[0]
        assert single["completion_ids"] == b["completion_ids"]
        assert b["prompt_ids"] == tok(p, add_special_tokens=False)["input_ids"]


def test_real_model_cut_at_first_eos(tiny):
    model, tok = tiny
    prompts = [chat_prompt(tok, "Count: 1, 2, 3"), chat_prompt(tok, "x")]
    torch.manual_seed(1)
    free = G.generate(model, tok, prompts, max_new_tokens=6, eos_ids=[-5])  # an id that never comes
    assert all(len(o["completion_ids"]) == 6 and not o["finished"] for o in free)
    toks = free[0]["completion_ids"]
    stop = toks[2]
    assert stop not in toks[:2]
    torch.manual_seed(1)
    cut = G.generate(
        model, tok, prompts, max_new_tokens=6, eos_ids=[stop]
    )  # same RNG draws until the stop
    assert cut[0]["completion_ids"] == toks[:3] and cut[0]["finished"]


def test_sampling_reproducible_with_torch_seed(tiny):
    model, tok = tiny
    prompts = [chat_prompt(tok, "a"), chat_prompt(tok, "bb")]
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        runs.append(
            [
                o["completion_ids"]
                for o in G.generate(
                    model, tok, prompts, num_samples=3, max_new_tokens=4, batch_size=4
                )
            ]
        )
    assert runs[0] == runs[1]
    assert len(runs[0]) == 6
