"""reinject.py: the queue's rules, the loop against them, and re-injection off changing nothing
(the paper's future work: re-inject former cliff prompts into RL after a delay)."""

import os

import pytest
import torch
from conftest import hash_reward, read_jsonl, rows, train_args

import hdpo
import reinject
from harness.checkpoint import find_checkpoint
from harness.loading import load_model


def test_reinject_take_waits_the_delay_caps_and_takes_the_oldest_first():
    queue = [(3, 9), (1, 5), (2, 7), (1, 4)]  # (step distilled, training-row index)
    take = reinject.take
    assert take(queue, 2, 2, 8) == ([], queue)  # distilled at step 1: due at step 3, not before
    assert take(queue, 3, 2, 8) == ([5, 4], [(3, 9), (2, 7)])  # step 1's, in queue order
    assert take(queue, 3, 2, 1) == ([5], [(3, 9), (2, 7), (1, 4)])  # the cap; the oldest first
    assert take(queue, 4, 2, 3) == ([5, 4, 7], [(3, 9)])  # step 1's before step 2's
    assert take(queue, 9, 1, 8) == ([5, 4, 7, 9], [])
    assert take([], 5, 1, 8) == ([], [])


def test_reinject_enqueue_appends_in_order_once_per_prompt():
    enqueue = reinject.enqueue
    assert enqueue([], [6, 2, 6], 4) == [(4, 6), (4, 2)]  # one entry per prompt, in order
    # prompt 2 is still queued (distilled again before its re-injection): it keeps its place
    assert enqueue([(1, 2)], [3, 2], 5) == [(1, 2), (5, 3)]
    assert enqueue([(1, 2)], [], 5) == [(1, 2)]


def test_reinjected_prompt_that_is_distilled_again_is_queued_again():
    """Prompt 4 distilled at step 1 (delay 2) returns at step 3; a cliff again there and distilled
    again, it is queued with step 3 and returns at step 5; prompt 8 (distilled at step 3 while 4
    was out of the queue) comes out with it, after it."""
    q = reinject.enqueue([], [4], 1)
    again, q = reinject.take(q, 2, 2, 4)
    assert again == [] and q == [(1, 4)]
    again, q = reinject.take(q, 3, 2, 4)
    assert again == [4] and q == []
    q = reinject.enqueue(q, [4, 8], 3)  # step 3: re-injected 4 was a cliff, distilled again
    assert reinject.take(q, 4, 2, 4) == ([], [(3, 4), (3, 8)])
    assert reinject.take(q, 5, 2, 4) == ([4, 8], [])


@pytest.mark.parametrize("flags", [["--reinject-delay", "-1"], ["--reinject-max", "0"]])
def test_invalid_reinject_flags_are_argparse_errors(flags, capsys):
    with pytest.raises(SystemExit) as e:
        hdpo.parse_args(flags)
    assert e.value.code == 2 and flags[0] in capsys.readouterr().err


def run_short(model_dir, out, *flags, steps=3):
    """hdpo.train for `steps` steps on rows(); -> (metrics rows, samples, final weights, trainer
    state of the end-of-run checkpoint)."""
    args = train_args(model_dir, out, "--max-steps", str(steps), "--privileged-generations", "2",
                      *flags)  # fmt: skip
    hdpo.train(args, train_rows=rows(), val_rows=[], reward_fn=hash_reward)
    weights = load_model(str(out / "final"), device="cpu", dtype=torch.float32)[0].state_dict()
    ckpt = find_checkpoint("latest", str(out))
    trainer = torch.load(os.path.join(ckpt, "trainer.pt"), weights_only=True)
    return read_jsonl(out / "metrics.jsonl"), read_jsonl(out / "samples.jsonl"), weights, trainer


REINJECT_KEYS = ("reinjected", "reinjected_solved", "reinjected_cliffs", "reinject_queued")


@pytest.mark.parametrize(
    "base,off",
    [
        (["--distill-weight", "1"], ["--reinject-delay", "0", "--reinject-max", "2"]),
        (["--distill-weight", "0"], ["--reinject-delay", "1", "--reinject-max", "2"]),
    ],
    ids=["delay 0", "lambda 0"],
)
def test_reinjection_off_is_exactly_the_run_without_the_flags(tiny_qwen_dir, tmp_path, base, off):
    """--reinject-delay 0 (λ = 1), or λ = 0 with a delay (nothing is ever distilled, so nothing is
    queued): the same rollouts, rewards, losses, gradient norms, data position and final weights
    as the same run without the flags."""
    want = run_short(tiny_qwen_dir, tmp_path / "plain", *base)
    got = run_short(tiny_qwen_dir, tmp_path / "off", *base, *off)
    if base[1] == "1":
        assert sum(m["distill_sequences"] for m in want[0]) > 0, "the test needs distillation"
    assert any(m["grad_norm"] > 0 for m in want[0]), "the test needs updates"
    timed = lambda k: k.endswith("_time_s")
    for w, g in zip(want[0], got[0]):
        if off[1] != "0":  # λ = 0 with a delay: the counters are logged, and all zero
            assert all(g.pop(k) == 0 for k in REINJECT_KEYS + ("reinject_queue",)), g
        assert {k: v for k, v in g.items() if not timed(k)} == {
            k: v for k, v in w.items() if not timed(k)
        }
    assert len(got[0]) == len(want[0]) == 3 and got[1] == want[1]  # metrics, samples
    assert all(torch.equal(got[2][k], want[2][k]) for k in want[2])  # final weights
    assert got[3]["data_pos"] == want[3]["data_pos"] == 3 * 3 and got[3]["reinject_queue"] == []


def test_reinjected_prompts_return_after_the_delay_in_place_of_deferred_fresh_ones(
    tiny_qwen_dir, tmp_path
):
    """The loop against the pure functions: each step's prompts (from samples.jsonl, which holds
    every rollout) are the next P - k prompts of the stream, deferred, not dropped, followed by the
    k prompts reinject.take gives from a queue fed by the prompts distilled (an R = 1 privileged
    rollout) at each step; the logged counts and the checkpointed queue and stream position
    agree."""
    D, M, P, G, steps = 1, 2, 3, 2, 5
    metrics, samples, _, trainer = run_short(
        tiny_qwen_dir, tmp_path, "--distill-weight", "1", "--reinject-delay", str(D),
        "--reinject-max", str(M), steps=steps,
    )  # fmt: skip
    data = rows()
    index = {r["problem"]: i for i, r in enumerate(data)}
    assert len(index) == len(data)
    queue, pos, n_again = [], 0, 0
    for m in metrics:
        s = m["step"]
        again, queue = reinject.take(queue, s, D, M)
        fresh = hdpo.prompt_stream(len(data), pos, P - len(again), 42)
        pos += P - len(again)
        plain = [x for x in samples if x["step"] == s and x["kind"] == "plain"]
        assert [index[x["problem"]] for x in plain[::G]] == fresh + again, s
        rewards = [[x["reward"] for x in plain[j * G : (j + 1) * G]] for j in range(P)]
        tail = rewards[P - len(again) :]  # the re-injected prompts' rollouts
        assert m["reinjected"] == len(again)
        assert m["reinjected_solved"] == sum(max(r) == 1 for r in tail)
        assert m["reinjected_cliffs"] == sum(max(r) == 0 for r in tail)
        priv = [x for x in samples if x["step"] == s and x["kind"] == "privileged"]
        distilled = [index[x["problem"]] for x in priv if x["reward"] == 1.0]
        new = reinject.enqueue(queue, distilled, s)
        assert m["reinject_queued"] == len(new) - len(queue) and m["reinject_queue"] == len(new)
        queue, n_again = new, n_again + len(again)
    assert n_again > 0, "the test needs re-injected prompts"
    assert any(m["reinjected_cliffs"] for m in metrics), "the test needs a cliff again"
    assert trainer["data_pos"] == pos < steps * P and trainer["reinject_queue"] == queue
