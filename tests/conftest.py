import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
DATA = os.path.join(ROOT, "tests", "data")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_qwen_dir(tmp_path_factory):
    """A random-weight Qwen2 (hidden 64, 2 layers) with the real Qwen2.5 tokenizer, on disk."""
    from offline import build_random_qwen

    return build_random_qwen(str(tmp_path_factory.mktemp("tiny_qwen")))
