"""The architectures users copy this project onto, each on a small random model with the feature
that sets it apart (conftest.ARCHS: a sliding window shorter than the prompts, Granite's
logits_scaling, Gemma 2's soft-cap, dynamic-NTK RoPE): the training gradients of both losses equal
a naive whole-sequence computation through the model's own logits at the sampling temperature,
within 1e-5 relative, or the model is refused at start-up with one line. The table of results is
docs/architectures.md."""

import os

import pytest
import torch
from conftest import ARCHS, DATA, arch_model, grads, loss_args, naive_hdpo_gradients

import hdpo
from forward import UnsupportedModelError, check_training_support, shares_prompts

# Prompts longer than the window (6 tokens) and of different lengths, in one micro-batch; every
# sequence at most 12 tokens, the dynamic-NTK model's original context.
SEQS = [
    ([3, 4, 5, 6, 7, 8, 9], [10, 11, 12, 13]),
    ([3, 4, 5, 6, 7, 8, 9], [14, 15, 16, 17, 18]),  # the same prompt: a group
    ([20, 21, 22], [23, 24, 25, 26, 27, 28, 29, 31, 32]),  # padding takes the others past 12
    ([30, 31, 32, 33, 34], [35, 36, 37, 38, 39]),
]
ADV = [1.0, -0.5, 0.75, -1.25]
# (x, x ⊕ y*, ȳ): two cliffs share the problem text x with different privileged prompts
PAIRS = [
    ([40, 41, 42], [50, 51, 52, 40, 41, 42], [60, 61, 62, 63]),
    ([40, 41, 42], [50, 51, 52, 40, 41, 42], [64, 65]),
    ([40, 41, 42], [53, 54, 55, 56, 57, 40, 41, 42], [66, 67, 68]),
    ([70], [71, 72, 73, 70], [74, 75, 76, 77, 78]),
]
MAX_SEQ_LEN = 12
WINDOWED = ("mistral-window", "qwen2-window", "gemma2")


def step_args(**kw):
    """One micro-batch for everything (the prompts of different lengths share it), lm_head chunks
    of 5 positions, top-16 teacher, λ = 0.3, sampling temperature 0.7."""
    kw = {"micro_batch_tokens": 1000, "temperature": 0.7, "max_seq_len": MAX_SEQ_LEN, **kw}
    return loss_args(**kw)


def assert_close(got, want, rel=1e-5):
    """Every parameter's gradient within `rel` of the reference, relative to its norm."""
    assert got.keys() == want.keys()
    assert sum(float(g.norm()) for g in want.values()) > 0, "the test needs a gradient"
    for k in want:
        err, size = float((got[k] - want[k]).norm()), float(want[k].norm())
        assert err <= rel * size + 1e-12, (k, err, size)


def hdpo_gradients(model, args, seqs=SEQS, pairs=PAIRS):
    """hdpo's ∇(L_GRPO + λ L_JSD) (drifting teacher) -> (grads, L_GRPO, L_JSD)."""
    model.zero_grad(set_to_none=True)
    n_grpo, n_jsd = sum(len(c) for _, c in seqs), sum(len(y) for *_, y in pairs)
    lg = hdpo.grpo_backward(model, seqs, ADV, n_grpo, args, "cpu")
    lj = hdpo.jsd_backward(model, model, pairs, n_jsd, args, "cpu")
    out = grads(model)
    model.zero_grad(set_to_none=True)
    return out, lg, lj


@pytest.mark.parametrize("arch", list(ARCHS))
def test_training_gradient_equals_naive_whole_sequence_forward(arch):
    """The start-up check accepts the model (a windowed one with a note: every sequence is then
    forwarded whole), and hdpo's chunked, packed, shared-prompt gradient of L_GRPO + λ L_JSD at
    temperature 0.7 equals the naive one: each sequence alone through model(...).logits / T."""
    model, args = arch_model(arch), step_args()
    note = check_training_support(model, args.max_seq_len)
    assert (note is not None and "attention window" in note) == (arch in WINDOWED), note
    assert shares_prompts(model, args.max_seq_len) == (arch not in WINDOWED)
    got, lg, lj = hdpo_gradients(model, args)
    want, _, ref_j = naive_hdpo_gradients(model, model, SEQS, ADV, PAIRS, args)
    assert lj == pytest.approx(ref_j, rel=1e-5)  # L_JSD; L_GRPO's value is -Σ A·|c| / N (ratio 1)
    n = sum(len(c) for _, c in SEQS)
    assert lg == pytest.approx(-sum(a * len(c) for (_, c), a in zip(SEQS, ADV)) / n, rel=1e-6)
    assert_close(got, want)


def test_a_window_that_cannot_bind_keeps_the_shared_prompt_forward_exact():
    """A window of at least 2 x --max-seq-len never binds on the shared-prompt forward's columns
    (padded prompts, then padded completions): the prompt is shared, and the gradient is exact."""
    model, args = arch_model("mistral-window", sliding_window=32), step_args(max_seq_len=16)
    assert shares_prompts(model, 16) and not shares_prompts(model, 17)
    assert check_training_support(model, 16) is None
    got, *_ = hdpo_gradients(model, args)
    assert_close(got, naive_hdpo_gradients(model, model, SEQS, ADV, PAIRS, args)[0])


def test_dynamic_ntk_beyond_its_original_context_is_refused_at_startup():
    """Past max_position_embeddings (12) dynamic NTK recomputes its frequencies from the batch's
    longest position, so a row's logits depend on its batchmates: refused, in one line."""
    model = arch_model("llama-dynamic-ntk")
    with pytest.raises(UnsupportedModelError) as e:
        check_training_support(model, MAX_SEQ_LEN + 1)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("llama: its RoPE (dynamic NTK")
    assert "--max-seq-len 12 or less" in msg
    # why: a 9-token sequence batched with a 14-token one is not what it is alone
    ids = torch.arange(3, 17)[None].repeat(2, 1)  # [2, 14]
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    with torch.no_grad():
        batched = model(input_ids=ids, attention_mask=mask).logits[1, :9]
        alone = model(input_ids=ids[1:, :9]).logits[0]
    assert (batched - alone).abs().max() > 1e-5


def test_an_unknown_logit_transform_is_refused_at_startup(monkeypatch):
    """A head that changes the logits in a way logit_transform does not know (here: logits + a
    per-token bias the config does not declare) fails the start-up probe, in one line."""
    model = arch_model("llama")
    forward = model.forward

    def shifted(*a, **kw):
        out = forward(*a, **kw)
        out.logits = out.logits + torch.linspace(0, 1, out.logits.shape[-1])
        return out

    monkeypatch.setattr(model, "forward", shifted)
    with pytest.raises(UnsupportedModelError) as e:
        check_training_support(model, MAX_SEQ_LEN)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(
        "llama: its logits are not lm_head(last hidden state)"
    )


def test_refusal_is_one_line_on_the_command_line_before_any_step(tiny_qwen_dir, tmp_path, capsys):
    """hdpo.py on a Qwen2 with dynamic-NTK RoPE (original context 64) and --max-seq-len 128: exit 1,
    one line `hdpo.py: error: ...` on stderr, no step taken."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    cfg = AutoConfig.from_pretrained(tiny_qwen_dir)
    cfg.max_position_embeddings = 64
    cfg.rope_parameters = {**cfg.rope_parameters, "rope_type": "dynamic", "factor": 2.0}
    folder = str(tmp_path / "dynamic")
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_qwen_dir).save_pretrained(folder)
    out = tmp_path / "run"
    argv = ["--model", folder, "--dataset", os.path.join(DATA, "openmathinstruct2_sample.jsonl"),
            "--max-seq-len", "128", "--max-steps", "1", "--output-dir", str(out)]  # fmt: skip
    capsys.readouterr()  # the saving above printed progress
    with pytest.raises(SystemExit) as e:
        hdpo.main(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 1 and "\n" not in err, err
    assert err.startswith("hdpo.py: error: qwen2: its RoPE (dynamic NTK") and "64 or less" in err
    assert not (out / "metrics.jsonl").exists()
