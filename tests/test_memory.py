"""Memory of the loss passes: the log-prob (GRPO) and JSD_k passes never hold full-vocabulary fp32
logits for every position of a micro-batch, so their peak stays far below an [N, V] fp32 tensor and
does not grow with the completion length beyond the chunk.

Torch's CPU allocations are invisible to tracemalloc, so each measurement runs in a fresh subprocess
that reads its own resident set from /proc/self/status: VmRSS before the call, VmHWM (peak) after
it, with the peak reset just before the call (`echo 5 > /proc/self/clear_refs`, Linux >= 4.0).
"""

import json
import os
import platform
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(
    not (sys.platform.startswith("linux") and os.path.exists("/proc/self/clear_refs")),
    reason="needs Linux /proc/self/status and clear_refs",
)

# a smaller vocabulary than Qwen's keeps this fast; the claim is about shapes, not the number
VOCAB = 32768
CHUNK = 128  # --logit-chunk: positions per lm_head chunk
SEQS = 2  # sequences in the micro-batch (one micro-batch: --micro-batch-tokens is large)

CHILD = r"""
import json, sys, torch
sys.path.insert(0, {root!r})
import hdpo
from transformers import Qwen2Config, Qwen2ForCausalLM

def kb(field):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(field + ":"))

def peak_mb(fn):
    base = kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    fn()
    return (kb("VmHWM") - base) / 1024

torch.manual_seed(0)
torch.set_num_threads(1)
V, L, B = {vocab}, {length}, {seqs}
cfg = Qwen2Config(vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                  max_position_embeddings=4096)
model = Qwen2ForCausalLM(cfg).train()
args = hdpo.parse_args(["--micro-batch-tokens", "1000000", "--logit-chunk", "{chunk}",
                        "--distill-weight", "1"])
g = torch.Generator().manual_seed(1)
rand = lambda n: torch.randint(0, V, (n,), generator=g).tolist()
plain, priv = [rand(40) for _ in range(B)], [rand(60) for _ in range(B)]
comps = [rand(L) for _ in range(B)]
seqs, pairs = list(zip(plain, comps)), list(zip(plain, priv, comps))
adv = [1.0 if i % 2 else -1.0 for i in range(B)]
n = B * L
# warm-up on short completions: thread pools, autograd state and the .grad buffers exist
# before measuring
hdpo.grpo_backward(model, [(p, c[:8]) for p, c in seqs], adv, 8 * B, args, "cpu")
hdpo.jsd_backward(model, model, [(p, t, c[:8]) for p, t, c in pairs], 8 * B, args, "cpu")
out = {{"grpo": peak_mb(lambda: hdpo.grpo_backward(model, seqs, adv, n, args, "cpu")),
        "jsd": peak_mb(lambda: hdpo.jsd_backward(model, model, pairs, n, args, "cpu")),
        "full_mb": n * V * 4 / 2**20, "chunk_mb": {chunk} * V * 4 / 2**20}}
print("RESULT " + json.dumps(out))
"""


def measure(length):
    code = CHILD.format(root=ROOT, vocab=VOCAB, length=length, seqs=SEQS, chunk=CHUNK)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    p = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env
    )
    assert p.returncode == 0, p.stderr[-3000:]
    line = next(ln for ln in p.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


@pytest.fixture(scope="module")
def peaks():
    return {L: measure(L) for L in (256, 1024)}


@pytest.mark.slow
def test_peak_far_below_full_vocab_tensor(peaks):
    """At 1,024 completion tokens, each loss pass peaks far below one [N, V] fp32 tensor (N = all
    positions of the micro-batch), which the straightforward computation needs several of (logits,
    log-softmax, grads)."""
    m = peaks[1024]
    for name in ("grpo", "jsd"):
        assert m[name] < 0.3 * m["full_mb"], (name, m)


@pytest.mark.slow
def test_peak_does_not_grow_with_length_beyond_the_chunk(peaks):
    """4x the completion length (both well past the chunk): the peak grows by far less than the [N,
    V] tensor does."""
    short, long = peaks[256], peaks[1024]
    for name in ("grpo", "jsd"):
        grew = long[name] - short[name]
        assert grew < 0.25 * (long["full_mb"] - short["full_mb"]), (name, short, long)


# ---------------------------------------------------------------- the memory model (GPU planning)


def test_activation_bytes_per_token_is_measured_and_checkpointing_shrinks_it():
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from harness.memory import activation_bytes_per_token, set_checkpointing

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=512, hidden_size=64, intermediate_size=256, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    model = Qwen2ForCausalLM(cfg)
    plain = activation_bytes_per_token(model, __import__("contextlib").nullcontext)
    # at least every layer's fp32 input and MLP activations are saved for each token
    assert plain > cfg.num_hidden_layers * (cfg.hidden_size + cfg.intermediate_size) * 4
    set_checkpointing(model, True)
    ckpt = activation_bytes_per_token(model, __import__("contextlib").nullcontext)
    assert 0 < ckpt < plain / 3  # only each layer's input is kept


def test_micro_batch_plan_fits_the_budget_and_turns_checkpointing_on_only_when_needed():
    from harness.memory import plan_micro_batch_tokens

    GB = 10**9
    tokens, ckpt, fits = plan_micro_batch_tokens(80 * GB, 30 * GB, 3.5e6, 0.5e6, 4096)
    assert (ckpt, fits) == (False, True) and 4096 <= tokens and tokens * 3.5e6 <= 50 * GB
    assert tokens % 1024 == 0
    tokens, ckpt, fits = plan_micro_batch_tokens(40 * GB, 30 * GB, 3.5e6, 0.5e6, 4096)
    assert (ckpt, fits) == (True, True) and tokens * 0.5e6 <= 10 * GB  # 10 GB left: checkpoint
    assert plan_micro_batch_tokens(31 * GB, 30 * GB, 3.5e6, 0.5e6, 4096)[1:] == (True, False)


def test_plan_memory_sets_micro_batch_tokens_and_reports(monkeypatch, tmp_path):
    """plan_memory as setup_run calls it on a GPU (the card's free memory stubbed): it measures,
    chooses --micro-batch-tokens unless given, and turns checkpointing on for a small card."""
    import contextlib

    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    import hdpo
    from harness.memory import plan_memory

    cfg = Qwen2Config(vocab_size=512, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    model = Qwen2ForCausalLM(cfg)
    for card, want_ckpt in ((2 * 10**9, False), (1.8e7, True)):
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d, c=card: (c, c))
        args = hdpo.parse_args(["--max-seq-len", "1024"])
        args.micro_batch_tokens = None
        line = plan_memory(args, model, contextlib.nullcontext, 1, 0)
        assert args.micro_batch_tokens >= 1024 and args.gradient_checkpointing == want_ckpt, line
        assert f"--micro-batch-tokens {args.micro_batch_tokens}" in line
        model.gradient_checkpointing_disable()


def test_memory_plan_counts_what_is_loaded_once_and_measures_after_emptying_the_cache(monkeypatch):
    """Issue 25, item 9, on a fake 80 GiB card: loading the policy and a frozen teacher (8 GiB)
    left 60 GiB in use; the activation probes left 5 GiB in the allocator's cache, which only
    empty_cache hands back. The plan reads the card after emptying the cache and subtracts only
    what training adds to the loaded weights (fixed_training_bytes' added part):
    budget = 0.9 x 80 GiB - 60 GiB - added, micro-batch = budget / (2 MiB a token), rounded down
    to 1,024 tokens; a 4,096-token sequence fits, so checkpointing stays off (counting the teacher
    and the cache again would leave no budget and turn it on)."""
    import contextlib

    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    import harness.memory as memory
    import hdpo

    GiB, MiB = 2**30, 2**20
    card = {"total": 80 * GiB, "used": 60 * GiB, "cached": 5 * GiB}
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: card.update(cached=0))
    monkeypatch.setattr(
        torch.cuda, "mem_get_info",
        lambda device: (card["total"] - card["used"] - card["cached"], card["total"]),
    )  # fmt: skip
    probes = iter([2 * MiB, 0.25 * MiB])  # per token: plain, then with checkpointing
    monkeypatch.setattr(memory, "activation_bytes_per_token", lambda model, amp: next(probes))
    cfg = Qwen2Config(vocab_size=512, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    model = Qwen2ForCausalLM(cfg)
    args = hdpo.parse_args(["--max-seq-len", "4096", "--logit-chunk", "1024"])
    args.micro_batch_tokens = None
    line = memory.plan_memory(args, model, contextlib.nullcontext, 1, 8 * GiB)
    n_params = sum(p.numel() for p in model.parameters())
    resident, added = memory.fixed_training_bytes(n_params, 512, 1024, 8 * GiB, 1)
    assert resident == 4 * n_params + 8 * GiB and added == 16 * n_params + 3 * 1024 * 512 * 4
    budget = 0.9 * 80 * GiB - 60 * GiB - added
    assert args.micro_batch_tokens == int(budget / (2 * MiB)) // 1024 * 1024 >= 4096
    assert not args.gradient_checkpointing and "gradient checkpointing off" in line, line
    assert card["cached"] == 0  # emptied before it was read
    # before: the probes' 5 GiB cache and the 8 GiB teacher (and the weights) counted again
    assert budget - 5 * GiB - 8 * GiB < 4096 * 2 * MiB  # no room for one sequence: checkpointing


KEPT_CHILD = r"""
import ctypes, sys, torch
sys.path.insert(0, sys.argv[1])
import harness.memory as memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
if sys.argv[2] == "keep":
    assert memory.keep_freed_memory()
x = torch.ones(2**24)  # a 64 MiB block, as a micro-batch's activations
mapped = libc.mallinfo2().hblkhd  # bytes in blocks glibc mmapped (and unmaps when freed)
del x
print(mapped, libc.mallinfo2().fordblks)  # and the free bytes glibc keeps in its heap after
"""


@pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc"
    or tuple(map(int, platform.libc_ver()[1].split(".")[:2])) < (2, 33),
    reason="keep_freed_memory tunes glibc's allocator (mallinfo2: glibc >= 2.33)",
)
def test_keep_freed_memory_keeps_a_freed_large_block_for_reuse():
    """By default glibc gives a 64 MiB block its own mapping and unmaps it when freed, so the next
    micro-batch faults it in again, zeroed; after keep_freed_memory() it comes from the heap and
    stays there, free, for the next one. Read from glibc's own counters (mallinfo2), not from page
    faults, which the kernel's reclaim of idle pages also moves. glibc falls back to mmap when the
    heap cannot grow where the address layout put it (about one process in three here), so the
    kept case takes the best of up to three processes."""

    def counters(mode):
        out = subprocess.run([sys.executable, "-c", KEPT_CHILD, ROOT, mode], check=True,
                             capture_output=True, text=True).stdout  # fmt: skip
        return [int(v) for v in out.split()[-2:]]

    block = 2**24 * 4
    mapped, kept = counters("default")
    assert mapped >= block and kept < block  # its own mapping, handed back when freed
    for _ in range(3):
        mapped, kept = counters("keep")
        if mapped < block:
            break
    assert mapped < block and kept >= block  # from the heap, and kept there after the free
