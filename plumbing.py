"""Plumbing behind hdpo.py and eval.py, kept out of the algorithm's way: loading a model with
clear errors, torch.distributed helpers, checkpoints and exact resume, JSONL logs, and stopping
cleanly on Ctrl-C / SIGTERM.
"""

import importlib
import json
import math
import os
import random
import shutil
import signal
import threading
import time

import numpy as np
import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM, AutoTokenizer

# ----------------------------------------------------------------------------------------------
# Errors and model loading.


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


# ----------------------------------------------------------------------------------------------
# torchrun: token counts, statistics and gradients are summed over ranks, so both losses are
# normalised by global token counts (PAPER.md). Gradients are all-reduced once per step rather than
# by DDP's per-backward hooks, because ranks run different numbers of micro-batches.


def init_distributed():
    """Under torchrun (WORLD_SIZE > 1): start torch.distributed, NCCL on GPU, gloo on CPU. Each
    rank is pinned to cuda:LOCAL_RANK BEFORE NCCL starts: collectives that take no tensor
    (barrier, all_gather_object) run on the current device, which is otherwise cuda:0 on every
    rank (a hang or an NCCL error at the first validation or checkpoint)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return
    if torch.cuda.is_available():
        device = compute_device()
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")


def compute_device():
    """cuda:LOCAL_RANK when a GPU is present (LOCAL_RANK is 0 outside torchrun), else cpu."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def keep_freed_memory():
    """CPU training: let glibc keep freed memory for reuse instead of handing every large block
    back to the OS and faulting it in again (zeroed) at the next micro-batch. Each micro-batch
    frees and re-allocates its activations and [V, H] gradients. Measured together with two
    other CPU changes (benchmarks/profile/ab_keep_freed_chunk256_one_embedding.json, SmolLM2-135M,
    2-core CPU): steps ~14% shorter, peak resident memory unchanged. No-op off glibc. Returns
    whether it was applied."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    largest = ctypes.c_int(2**31 - 1)
    # M_MMAP_THRESHOLD (-3): blocks below it come from the heap; M_TRIM_THRESHOLD (-1): free
    # heap top kept up to this many bytes
    return bool(libc.mallopt(-3, largest)) and bool(libc.mallopt(-1, largest))


def world():
    """(rank, world_size); (0, 1) without torchrun."""
    return (
        (dist.get_rank(), dist.get_world_size())
        if dist.is_available() and dist.is_initialized()
        else (0, 1)
    )


def all_sum(values, device):
    """Sum a list of floats over ranks."""
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    if world()[1] > 1:
        dist.all_reduce(t)
    return t.tolist()


def all_reduce_grads(model, bucket_elements=2**26):
    """Sum .grad over ranks (missing grads count as zeros): gradients are packed into flat buckets
    of at most bucket_elements (256 MB in fp32) and all-reduced bucket by bucket, so the extra
    memory is one bucket, not a copy of every gradient."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if world()[1] == 1:
        return
    bucket, size = [], 0
    for i, p in enumerate(params):
        bucket.append(p.grad)
        size += p.grad.numel()
        if size >= bucket_elements or i == len(params) - 1:
            flat = torch.cat([g.reshape(-1) for g in bucket])  # [size]
            dist.all_reduce(flat)
            torch.nn.utils.vector_to_parameters(flat, bucket)
            bucket, size = [], 0


# ----------------------------------------------------------------------------------------------
# Checkpoints: model, tokenizer, optimiser, scheduler, frozen teacher, RNG states, stream position
# and step, written to a temporary folder and renamed, the last --keep-checkpoints kept.


def seed_everything(seed):
    """Python's, numpy's and torch's global RNGs."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state():
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(s):
    random.setstate(s["python"]), np.random.set_state(s["numpy"]), torch.set_rng_state(s["torch"])
    if s["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def save_checkpoint(
    out_dir, step, model, tokenizer, teacher, optimizer, scheduler, trainer_state, keep
):
    """Rank 0 writes; RNG states are per rank (rng-<rank>.pt), so every rank calls this."""
    rank, ws = world()
    ckpt_root = os.path.join(out_dir, "checkpoints")
    final, tmp = (
        os.path.join(ckpt_root, f"step-{step:06d}"),
        os.path.join(ckpt_root, f"step-{step:06d}.tmp"),
    )
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(os.path.join(tmp, "model"))
        tokenizer.save_pretrained(os.path.join(tmp, "model"))
        if teacher is not model:
            teacher.save_pretrained(os.path.join(tmp, "teacher"))
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "step": step,
                **trainer_state,
            },
            os.path.join(tmp, "trainer.pt"),
        )
    if ws > 1:
        dist.barrier()
    torch.save(rng_state(), os.path.join(tmp, f"rng-{rank}.pt"))
    if ws > 1:
        dist.barrier()
    if rank == 0:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)  # atomic: a checkpoint folder either exists whole or not at all
        for old in list_checkpoints(out_dir)[:-keep]:
            shutil.rmtree(os.path.join(ckpt_root, old), ignore_errors=True)
    if ws > 1:
        dist.barrier()
    return final


def list_checkpoints(out_dir):
    """The complete checkpoint folders step-N under out_dir/checkpoints, oldest first."""
    root = os.path.join(out_dir, "checkpoints")
    names = os.listdir(root) if os.path.isdir(root) else []
    return sorted(d for d in names if d.startswith("step-") and not d.endswith(".tmp"))


def find_checkpoint(resume, out_dir):
    """--resume PATH, or with "latest" the newest checkpoint in out_dir."""
    if resume != "latest":
        if not os.path.isfile(os.path.join(resume, "trainer.pt")):
            raise FileNotFoundError(f"--resume {resume}: not a checkpoint folder (no trainer.pt)")
        return resume
    found = list_checkpoints(out_dir)
    if not found:
        raise FileNotFoundError(
            f"--resume: no checkpoint in {os.path.join(out_dir, 'checkpoints')}"
        )
    return os.path.join(out_dir, "checkpoints", found[-1])


def restore_checkpoint(ckpt, optimizer, scheduler, state, seed):
    """Optimiser, scheduler and trainer state (in place) and this rank's RNG states."""
    rank = world()[0]
    saved = torch.load(os.path.join(ckpt, "trainer.pt"), weights_only=False)
    optimizer.load_state_dict(saved.pop("optimizer"))
    scheduler.load_state_dict(saved.pop("scheduler"))
    state.update({k: v for k, v in saved.items() if k in state})
    rng_file = os.path.join(ckpt, f"rng-{rank}.pt")
    if os.path.exists(rng_file):
        set_rng_state(torch.load(rng_file, weights_only=False))
    else:  # a rank the checkpoint did not have (larger world size)
        seed_everything(seed + rank + 1000 * state["step"])


def rewind_outputs(out_dir, step, jsonl_paths):
    """Resuming at `step`: drop the log rows and checkpoints written after it (they belong to an
    abandoned continuation), so no step repeats."""
    for path in jsonl_paths:
        truncate_jsonl(path, step)
    root = os.path.join(out_dir, "checkpoints")
    for d in os.listdir(root) if os.path.isdir(root) else []:  # step-N and step-N.tmp
        if d.startswith("step-") and int(d[5:].split(".")[0]) > step:
            shutil.rmtree(os.path.join(root, d), ignore_errors=True)


class StopOnSignal:
    """Ctrl-C / SIGTERM inside the block: `.signal` is set and the step in progress finishes (the
    loop then checkpoints and stops); a second signal quits at once. Handlers are installed only
    in the main thread (Python allows no others) and restored on exit."""

    def __enter__(self):
        self.signal, self.handlers = None, {}
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self.handlers[s] = signal.signal(s, self._on_signal)
        return self

    def _on_signal(self, signum, frame):
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum
        print(
            f"\nsignal {signum}: finishing the step in progress, then saving a checkpoint "
            "(again to quit now)",
            flush=True,
        )

    def __exit__(self, *exc):
        for s, h in self.handlers.items():
            signal.signal(s, h)
        return False


# ----------------------------------------------------------------------------------------------
# Logs.


def append_jsonl(path, row):
    clean = {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()
    }  # strict JSON
    with open(path, "a") as f:
        f.write(json.dumps(clean) + "\n")


def truncate_jsonl(path, max_step):
    """Drop rows written after the checkpoint we resume from, so metrics never repeat a step."""
    if os.path.exists(path):
        with open(path) as f:
            rows = [ln for ln in f if ln.strip() and json.loads(ln).get("step", 0) <= max_step]
        with open(path, "w") as f:
            f.writelines(rows)


class TrainingError(RuntimeError):
    """A run that cannot go on (e.g. too many non-finite steps in a row)."""


# ----------------------------------------------------------------------------------------------
# The training loop's bookkeeping: console line and JSONL rows, checkpoints when due, the end of a
# run. `run` is the namespace training_run.setup_run builds.


def log_step(run, row, batch, rollouts, rewards, owners, priv, priv_ok):
    """Rank 0: metrics.jsonl, a few samples in samples.jsonl, the trackers, one console line."""
    if run.rank != 0:
        return
    args, G, step = run.args, run.args.num_generations, row["step"]
    append_jsonl(run.paths["metrics"], row)
    sample = lambda kind, r, text, reward: {
        "step": step, "kind": kind, "problem": r["problem"], "answer": r["answer"],
        "completion": text, "reward": reward,
    }  # fmt: skip
    plain = [sample("plain", batch[i // G], o["text"], float(rewards.view(-1)[i]))
             for i, o in enumerate(rollouts[: args.samples_per_step])]  # fmt: skip
    hinted = [
        sample("privileged", batch[i], o["text"], float(ok))
        # fmt: skip
        for o, i, ok in list(zip(priv, owners, priv_ok))[: args.samples_per_step]
    ]
    for s in plain + hinted:
        append_jsonl(run.paths["samples"], s)
    run.trackers.log_step(row, plain + hinted)
    ppr, entropy = row["privileged_pass_rate"], row.get("entropy")
    vals = [f"{k[4:]} {v:.3f}" for k, v in row.items() if k.startswith("val_") and v is not None]
    print(
        f"step {step}/{args.max_steps} | reward {row['reward_mean']:.3f} | "
        + ("" if entropy is None else f"entropy {entropy:.3f} | ")
        + f"cliffs {row['num_cliffs']}/{row['num_prompts']} | "
        f"priv pass {'-' if ppr is None else f'{ppr:.2f}'} | "
        f"distill {row['distill_sequences']} seq {row['distill_tokens']} tok | "
        f"L_grpo {row['loss_grpo']:+.4f} L_jsd {row['loss_jsd']:.4f} | "
        f"gnorm {row['grad_norm']:.3f} | lr {row['lr']:.2e} | "
        f"{row['step_time_s']:.1f}s (gen {row['generation_time_s']:.1f}s)"
        + (" | SKIPPED (non-finite)" if row["skipped"] else "")
        + (" | val " + " ".join(vals) if vals else ""),
        flush=True,
    )


def raise_if_failing(run):
    """After --max-bad-steps non-finite steps in a row: stop with a one-line error."""
    bad, step = run.state["bad_steps"], run.state["step"]
    if bad >= run.args.max_bad_steps:
        raise TrainingError(
            f"{bad} non-finite steps in a row (loss or gradient is NaN/inf); stopping at step "
            f"{step}. Lower --lr or check the data; --debug for details"
        )


def checkpoint_if_due(run, stop):
    """Every --save-every steps, at the last step, and after Ctrl-C / SIGTERM (the ranks agree).
    -> True when the run should stop now."""
    args, step = run.args, run.state["step"]
    stopping = all_sum([stop.signal is not None], run.device)[0] > 0
    if stopping or (args.save_every and step % args.save_every == 0) or step == args.max_steps:
        trainer_state = {k: v for k, v in run.state.items() if k != "step"}
        path = save_checkpoint(
            args.output_dir, step, run.model, run.tokenizer, run.teacher, run.optimizer,
            run.scheduler, trainer_state, args.keep_checkpoints,
        )  # fmt: skip
        if run.rank == 0:
            print(f"checkpoint: {path}", flush=True)
    return stopping


def finish_run(run, stop):
    """The final model (unless interrupted), and every rank returns with the run's files written."""
    out = run.args.output_dir
    run.trackers.close()
    if run.rank == 0 and not stop.signal:
        run.model.save_pretrained(os.path.join(out, "final"))
        run.tokenizer.save_pretrained(os.path.join(out, "final"))
    if run.world_size > 1:
        dist.barrier()
    return {
        "steps": run.state["step"],
        "time_s": time.time() - run.t_start,
        "output_dir": out,
        "best_eval": run.state["best"],
        "skipped_steps": run.state["skipped_steps"],
        "interrupted": stop.signal is not None,
    }


# ----------------------------------------------------------------------------------------------
# Memory model: what a training step holds on one GPU, to size micro-batches (and turn gradient
# checkpointing on) before the first step rather than after an out-of-memory error.


def activation_bytes_per_token(model, amp, probe=(128, 384)):
    """Bytes autograd saves per token for one forward through the model's layers, measured: a
    forward of probe[0] and of probe[1] random tokens with saved_tensors_hooks counting each saved
    storage once; the difference over the token difference is the per-token slope (fixed parts,
    such as autocast's weight copies, cancel)."""
    device = next(model.parameters()).device
    vocab = model.get_input_embeddings().weight.shape[0]

    def saved_bytes(n):
        seen = {}

        def pack(t):
            s = t.untyped_storage()
            seen[s.data_ptr()] = s.nbytes()
            return t

        ids = torch.randint(0, vocab, (1, n), device=device)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), amp():
            out = model.base_model(input_ids=ids, use_cache=False).last_hidden_state
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        del out
        return sum(b for ptr, b in seen.items() if ptr not in params)

    was_training = model.training
    model.train()
    try:
        return (saved_bytes(probe[1]) - saved_bytes(probe[0])) / (probe[1] - probe[0])
    finally:
        model.train(was_training)


def fixed_training_bytes(n_params, vocab, logit_chunk, frozen_teacher_bytes, world_size):
    """What a step holds whatever its length: fp32 weights, gradients and AdamW's two moments
    (16 bytes a parameter), bf16 copies autocast makes of the weights (2), the engine's bf16
    generation copy (2, engine._generation_model), a frozen teacher, the
    all-reduce bucket under torchrun (256 MB), and the lm_head's [chunk, V] fp32 buffers (up to
    three at a time: forward, backward, the teacher's top-k)."""
    bucket = 2**28 if world_size > 1 else 0
    return n_params * 20 + frozen_teacher_bytes + bucket + 3 * logit_chunk * vocab * 4


def plan_micro_batch_tokens(free_bytes, fixed_bytes, per_token, per_token_ckpt, longest,
                            cap=65536, step=1024):  # fmt: skip
    """The largest micro-batch (padded tokens, a multiple of `step`, at most `cap`) that fits in
    free_bytes next to the fixed part, and whether gradient checkpointing is needed for one
    sequence of `longest` tokens to fit. -> (tokens, checkpointing, fits)."""
    for ckpt, per in ((False, per_token), (True, per_token_ckpt)):
        tokens = min(cap, int((free_bytes - fixed_bytes) / per) // step * step)
        if tokens >= longest:
            return tokens, ckpt, True
    return max(step, tokens), True, False


def set_checkpointing(model, on):
    """Gradient (activation) checkpointing on or off: activation_checkpointing_* in transformers
    >= 5 (gradient_checkpointing_* is deprecated there), gradient_checkpointing_* before."""
    name = "activation" if hasattr(model, "activation_checkpointing_enable") else "gradient"
    getattr(model, f"{name}_checkpointing_{'enable' if on else 'disable'}")()


def plan_memory(args, model, amp, world_size, teacher_bytes):
    """On a GPU: measure the activations per token (with and without gradient checkpointing), add
    the fixed part, and choose --micro-batch-tokens (unless given) and gradient checkpointing
    (when one --max-seq-len sequence would not fit without it). -> one line for the console."""
    device = next(model.parameters()).device
    n_params = sum(p.numel() for p in model.parameters())
    vocab = model.get_output_embeddings().weight.shape[0]
    layers = model.config.get_text_config().num_hidden_layers
    per_token = activation_bytes_per_token(model, amp)
    set_checkpointing(model, True)
    per_token_ckpt = activation_bytes_per_token(model, amp) + per_token / layers  # + 1 layer redone
    if not args.gradient_checkpointing:
        set_checkpointing(model, False)
    fixed = fixed_training_bytes(n_params, vocab, args.logit_chunk, teacher_bytes, world_size)
    free, total = torch.cuda.mem_get_info(device)
    budget = 0.9 * total - (total - free)  # 10% for the allocator's fragmentation and NCCL
    tokens, ckpt, fits = plan_micro_batch_tokens(
        budget, fixed, per_token, per_token_ckpt, args.max_seq_len
    )
    if args.micro_batch_tokens is None:
        args.micro_batch_tokens = tokens
    if ckpt and not args.gradient_checkpointing:
        set_checkpointing(model, True)
        args.gradient_checkpointing = True
    gib = lambda b: f"{b / 2**30:.1f} GiB"
    line = (
        f"memory: {gib(total)} card, fixed {gib(fixed)}, activations {per_token / 2**10:.0f} KiB/"
        f"token ({per_token_ckpt / 2**10:.0f} with checkpointing) -> --micro-batch-tokens "
        f"{args.micro_batch_tokens}, gradient checkpointing {'on' if ckpt else 'off'}"
    )
    if not fits:
        line += f" | WARNING: one {args.max_seq_len}-token sequence may not fit in this card"
    return line


# ----------------------------------------------------------------------------------------------
# Experiment trackers (--report-to): optional packages, each imported only when asked for, fed on
# rank 0 only, all working offline. They receive what the JSONL logs hold: every metrics.jsonl
# row under its own names (its val_* copies left out: validation comes once, below), every
# eval.jsonl row under eval/<key> (eval/best/<key> for the best so far), and the step's
# samples.jsonl completions as a table (a markdown table in TensorBoard's text tab).

TRACKERS = ("tensorboard", "wandb", "trackio")
SAMPLE_COLUMNS = ("kind", "reward", "problem", "answer", "completion")


class TrackerError(RuntimeError):
    """A tracker asked for with --report-to that cannot start: the message names the pip command."""


def import_tracker(name):
    """The tracker's package (imported here, never at the top of a module), or TrackerError."""
    try:
        module = importlib.import_module(name)
        if name == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter  # torch's writer, tensorboard's files

            return SummaryWriter
        return module
    except ImportError as e:
        raise TrackerError(
            f"--report-to {name}: the {name} package is not installed (pip install {name})"
        ) from e


def save_args(args):
    """<output-dir>/args.json: the run's flags (report.py reads λ, the teacher and the setting)."""
    with open(os.path.join(args.output_dir, "args.json"), "w") as f:
        json.dump(vars(args), f, indent=1, default=str)


def tracker_scalars(row, prefix=""):
    """A JSONL row as {name: number}: nested dicts become prefix/key, booleans 0 or 1; None,
    non-finite numbers and text are left out (metrics.jsonl writes them as null)."""
    out = {}
    for k, v in row.items():
        if isinstance(v, dict):
            out.update(tracker_scalars(v, f"{prefix}{k}/"))
        elif isinstance(v, (bool, int, float)) and math.isfinite(v):
            out[prefix + k] = int(v) if isinstance(v, bool) else v
    return out


class TensorBoardTracker:
    """Event files in <output-dir>/tensorboard (`tensorboard --logdir runs`). On --resume, events
    after the checkpoint's step (an abandoned continuation) are dropped, as in the JSONL logs."""

    def __init__(self, args, step):
        SummaryWriter = import_tracker("tensorboard")
        log_dir = os.path.join(args.output_dir, "tensorboard")
        self.writer = SummaryWriter(log_dir, purge_step=step + 1 if step else None)
        flags = json.dumps(vars(args), indent=1, default=str)
        self.writer.add_text("args", "```\n" + flags + "\n```", step)

    def log(self, scalars, step):
        for k, v in scalars.items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()  # a crashed run keeps every step it logged

    def table(self, key, columns, rows, step):
        cell = lambda v: str(v).replace("|", "\\|").replace("\n", " ↵ ")
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
        self.writer.add_text(key, "\n".join(lines), step)
        self.writer.flush()

    def close(self):
        self.writer.close()


class RunTracker:
    """What W&B and trackio share: a run (self.run) of a library (self.lib) with log, Table and
    finish."""

    def log(self, scalars, step):
        self.run.log(scalars, step=step)

    def table(self, key, columns, rows, step):
        self.run.log({key: self.lib.Table(columns=list(columns), data=rows)}, step=step)

    def close(self):
        self.run.finish()


class WandbTracker(RunTracker):
    """A Weights & Biases run in offline mode (files in <output-dir>/wandb; `wandb sync` uploads
    them later) unless WANDB_MODE says otherwise. --resume starts a new W&B run from the
    checkpoint's step."""

    def __init__(self, args, step):
        self.lib = import_tracker("wandb")
        self.run = self.lib.init(
            project=args.tracker_project, name=os.path.normpath(args.output_dir),
            dir=args.output_dir, config=vars(args), mode=os.environ.get("WANDB_MODE", "offline"),
        )  # fmt: skip


class TrackioTracker(RunTracker):
    """A trackio run in its local store (TRACKIO_DIR, by default ~/.cache/huggingface/trackio;
    `trackio show` opens the dashboard), named after --output-dir. --resume continues it (the rows
    of an abandoned continuation, after an older checkpoint, stay)."""

    def __init__(self, args, step):
        trackio = self.lib = import_tracker("trackio")
        self.run = trackio.init(
            project=args.tracker_project, name=os.path.normpath(args.output_dir),
            config=vars(args), resume="allow" if step else "never",
        )  # fmt: skip


TRACKER_CLASSES = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker,
                   "trackio": TrackioTracker}  # fmt: skip


class Trackers:
    """The --report-to trackers of one run, started at `step` (0, or the checkpoint's step on
    --resume). Only rank 0 gets any: on other ranks every call does nothing."""

    def __init__(self, args, rank=0, step=0):
        names = [n for n in args.report_to if n != "none"] if rank == 0 else []
        self.trackers = []
        try:
            for name in names:
                self.trackers.append(TRACKER_CLASSES[name](args, step))
        except BaseException:
            self.close()
            raise

    def log_step(self, row, samples):
        """A metrics.jsonl row and the step's samples.jsonl rows."""
        scalars = tracker_scalars({k: v for k, v in row.items() if not k.startswith("val_")})
        scalars.pop("step", None)
        rows = [[s[c] for c in SAMPLE_COLUMNS] for s in samples]
        for t in self.trackers:
            t.log(scalars, row["step"])
            if rows:
                t.table("samples", SAMPLE_COLUMNS, rows, row["step"])

    def log_eval(self, row):
        """An eval.jsonl row, under eval/<key>."""
        scalars = tracker_scalars({k: v for k, v in row.items() if k != "step"}, "eval/")
        for t in self.trackers:
            t.log(scalars, row["step"])

    def close(self):
        while self.trackers:
            self.trackers.pop().close()


def log_eval(run, row):
    """Rank 0: an eval.jsonl row, also sent to the trackers."""
    if run.rank == 0:
        append_jsonl(run.paths["eval"], row)
        run.trackers.log_eval(row)


def require_trackers(names):
    """Import each --report-to tracker now: a missing package stops a run before anything loads."""
    for name in names:
        if name != "none":
            import_tracker(name)
