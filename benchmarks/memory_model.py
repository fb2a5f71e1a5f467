"""The memory model of a training step at the paper's scale, measured on CPU at full width.

    python benchmarks/memory_model.py            # writes benchmarks/results/memory_model.json

Qwen2.5-Math-1.5B's shape (tests/data/qwen2.5-math-1.5b/config.json: hidden 1536, 28 layers,
12 heads, 2 KV heads, vocabulary 151,936) with random weights. Activations are measured, not
modelled: harness.memory.activation_bytes_per_token counts the bytes autograd saves in a forward
under bf16 autocast (fp32 weights), per token, with and without gradient checkpointing, on a
2-layer model of full width; a layer's share times 28 is the whole model's. The fixed part
(weights, gradients, AdamW, autocast's bf16 weight copies, a frozen bf16 teacher, the all-reduce
buffer, the lm_head chunks) is harness.memory.fixed_training_bytes for the real parameter count:
its resident part (the weights and a frozen teacher, on the card once loaded) plus what training
adds. The table is what harness.memory.plan_memory would choose on an 80 GB and a 141 GB card,
with 10% kept free: there plan_memory reads the resident part as memory in use and subtracts
only the added part, so on an empty card the two budgets are the same.

Caveats (reasoned, not measured on a GPU): CPU autocast saves what CUDA autocast saves for the
matmuls and norms; attention on a GPU uses a fused kernel whose saved state is linear in the
sequence (the probe's 128 and 384 tokens keep CPU attention's quadratic part small); the CUDA
context and allocator slack are inside the 10% margin.
"""

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
from transformers import Qwen2Config, Qwen2ForCausalLM  # noqa: E402

from harness.memory import (  # noqa: E402
    activation_bytes_per_token,
    fixed_training_bytes,
    plan_micro_batch_tokens,
    set_checkpointing,
)

GIB = 2**30


def main():
    with open(os.path.join(ROOT, "tests", "data", "qwen2.5-math-1.5b", "config.json")) as f:
        full = json.load(f)
    cfg = Qwen2Config(**{**full, "num_hidden_layers": 2})
    torch.manual_seed(0)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 2)))
    amp = lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    model = Qwen2ForCausalLM(cfg)
    per_layer = activation_bytes_per_token(model, amp) / 2
    set_checkpointing(model, True)
    per_layer_ckpt = activation_bytes_per_token(model, amp) / 2
    layers = full["num_hidden_layers"]
    per_token = per_layer * layers
    per_token_ckpt = per_layer_ckpt * layers + per_layer  # + the layer being recomputed
    # parameters of the full model: embeddings (tied with the head) + 28 layers + final norm
    n_layer = sum(p.numel() for p in model.model.layers[0].parameters())
    n_params = full["vocab_size"] * full["hidden_size"] + layers * n_layer + full["hidden_size"]
    rows = []
    for card_gib in (80, 141):
        for world, teacher in ((1, "drifting"), (1, "frozen"), (8, "drifting"), (8, "frozen")):
            teacher_bytes = 2 * n_params if teacher == "frozen" else 0
            fixed = sum(
                fixed_training_bytes(n_params, full["vocab_size"], 1024, teacher_bytes, world)
            )  # resident + added
            budget = 0.9 * card_gib * 1e9
            tokens, ckpt, fits = plan_micro_batch_tokens(
                budget, fixed, per_token, per_token_ckpt, 4096
            )
            no_ckpt = int((budget - fixed) / per_token)
            with_ckpt = int((budget - fixed) / per_token_ckpt)
            rows.append(dict(card_gb=card_gib, world_size=world, teacher=teacher,
                             fixed_gib=round(fixed / GIB, 1), max_tokens_no_ckpt=no_ckpt,
                             max_tokens_ckpt=with_ckpt, chosen_micro_batch_tokens=tokens,
                             checkpointing=ckpt, fits=fits))  # fmt: skip
    result = {
        "model": "Qwen2.5-Math-1.5B shape, random weights",
        "parameters": n_params,
        "activation_kib_per_token_per_layer": round(per_layer / 1024, 1),
        "activation_kib_per_token_per_layer_checkpointing": round(per_layer_ckpt / 1024, 2),
        "activation_mib_per_token": round(per_token / 2**20, 2),
        "activation_mib_per_token_checkpointing": round(per_token_ckpt / 2**20, 3),
        "torch": torch.__version__,
        "rows": rows,
    }
    print(f"parameters {n_params / 1e9:.2f} B; activations per token: {per_layer / 1024:.0f} KiB "
          f"per layer, {per_token / 2**20:.2f} MiB for 28 layers; with checkpointing "
          f"{per_token_ckpt / 2**20:.3f} MiB")  # fmt: skip
    print(f"{'card':>6}{'ranks':>6}{'teacher':>10}{'fixed GiB':>11}{'max tok':>10}"
          f"{'max tok (ckpt)':>16}{'chosen':>9}{'ckpt':>6}")  # fmt: skip
    for r in rows:
        ckpt = "on" if r["checkpointing"] else "off"
        print(f"{r['card_gb']:>5}G{r['world_size']:>6}{r['teacher']:>10}{r['fixed_gib']:>11}"
              f"{r['max_tokens_no_ckpt']:>10}{r['max_tokens_ckpt']:>16}"
              f"{r['chosen_micro_batch_tokens']:>9}{ckpt:>6}")  # fmt: skip
    out = os.path.join(ROOT, "benchmarks", "results", "memory_model.json")
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
