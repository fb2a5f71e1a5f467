"""Offline scaffolding: a random-weight Qwen2 model with the real Qwen2.5 tokenizer.

Nothing here is part of the algorithm. Tests, benchmarks and the README's offline
commands use it to get a model folder that `AutoModelForCausalLM.from_pretrained`
loads without the Hugging Face hub:

    python -m harness.offline OUT_DIR               # tiny: hidden 64, 2 layers
    python -m harness.offline OUT_DIR --full-size   # Qwen2.5-Math-1.5B's shape, random weights
"""

import argparse
import json
import os
import shutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENIZER_DIR = os.path.join(ROOT, "tests", "data", "qwen2.5-math-1.5b")
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json")


def build_random_qwen(
    out_dir,
    hidden_size=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    intermediate_size=128,
    full_size=False,
    seed=0,
    dtype="float32",
    tokenizer_dir=TOKENIZER_DIR,
):
    """Write a random-weight Qwen2ForCausalLM plus the real Qwen2.5 tokenizer into out_dir.

    The vocabulary is Qwen's 151,936 tokens, the chat template is Qwen2.5-Math's, and
    eos is <|endoftext|> (= pad), as in the released Math tokenizer_config.json.
    """
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    with open(os.path.join(tokenizer_dir, "config.json")) as f:
        cfg = json.load(f)
    if not full_size:
        cfg.update(
            hidden_size=hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=num_kv_heads,
            intermediate_size=intermediate_size,
            max_window_layers=num_layers,
        )
    for key in ("architectures", "transformers_version", "torch_dtype"):
        cfg.pop(key, None)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(Qwen2Config(**cfg)).to(getattr(torch, dtype))
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    for name in TOKENIZER_FILES:
        shutil.copy(os.path.join(tokenizer_dir, name), out_dir)
    AutoTokenizer.from_pretrained(out_dir)  # fail here, not later, if the tokenizer does not load
    return out_dir


if __name__ == "__main__":
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("out_dir")
    p.add_argument(
        "--full-size", action="store_true", help="Qwen2.5-Math-1.5B's shape (1.5B parameters)"
    )
    p.add_argument("--hidden-size", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    a = p.parse_args()
    print(
        build_random_qwen(
            a.out_dir,
            hidden_size=a.hidden_size,
            num_layers=a.layers,
            full_size=a.full_size,
            dtype=a.dtype,
        )
    )
