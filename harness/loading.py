"""Loading a model and tokenizer with one-line errors, and quiet libraries on the command line."""

import os

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


class ModelLoadError(RuntimeError):
    """A model or tokenizer that cannot be loaded: the message says why and what to do."""


def hub_offline():
    return any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def one_line(e):
    text = " ".join(str(e).split())
    return (text[:300] + "...") if len(text) > 300 else (text or type(e).__name__)


def quiet_libraries():
    """No library progress bars or info logs on the CLI: errors stay one line, the table stays
    readable."""
    try:
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    except Exception:
        pass
    try:
        from transformers.utils import logging as tlog

        tlog.disable_progress_bar()
        tlog.set_verbosity_error()
    except Exception:
        pass


def load_model(name_or_path, device=None, dtype=None, tokenizer=True):
    """(model, tokenizer) from a local folder or a hub id, in eval mode on `device` (tokenizer
    None with tokenizer=False: a checkpoint's teacher/ folder holds weights only).

    device defaults to cuda when available, else cpu; dtype to bfloat16 on cuda, float32 on cpu.
    Raises ModelLoadError with a one-line reason (missing folder, hub unreachable, broken
    checkpoint).
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    elif isinstance(dtype, str):
        dtype = {
            "bf16": torch.bfloat16,
            "bfloat16": torch.bfloat16,
            "fp16": torch.float16,
            "float16": torch.float16,
            "fp32": torch.float32,
            "float32": torch.float32,
        }[dtype]
    local = os.path.isdir(os.path.expanduser(name_or_path))
    path = os.path.expanduser(name_or_path) if local else name_or_path
    try:
        tokenizer = AutoTokenizer.from_pretrained(path) if tokenizer else None
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except Exception as e:
        if local:
            raise ModelLoadError(
                f"cannot load model from folder {name_or_path!r}: {one_line(e)}"
            ) from e
        looks_like_path = (
            name_or_path.startswith((".", "/", "~"))
            or name_or_path.count("/") > 1
            or os.sep in name_or_path
            and os.sep != "/"
        )
        if looks_like_path:
            raise ModelLoadError(
                f"cannot load model {name_or_path!r}: no such folder. "
                f"Pass a local folder: --model /path/to/folder"
            ) from e
        cls = type(e).__name__
        if not hub_offline() and ("RepositoryNotFound" in cls or "404" in str(e)):
            raise ModelLoadError(
                f"cannot load model {name_or_path!r}: not a local folder and not a model on the "
                f"Hugging Face hub. Pass a local folder: --model /path/to/folder"
            ) from e
        raise ModelLoadError(
            f"cannot load model {name_or_path!r}: not a local folder and the Hugging Face hub is "
            "unreachable "
            f"(offline). Download it first (hf download {name_or_path} --local-dir DIR) or pass a "
            f"local folder: --model /path/to/folder"
        ) from e
    if tokenizer and tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device)
    model.eval()
    return model, tokenizer
