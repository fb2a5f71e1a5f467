"""Checkpoints and exact resume: model, tokenizer, optimiser, scheduler, frozen teacher, RNG states,
stream position and step, written to a temporary folder and renamed, the last --keep-checkpoints
kept; and stopping cleanly on Ctrl-C / SIGTERM. Every file is read back with
torch.load(weights_only=True): tensors and plain Python data only, so a checkpoint folder from
elsewhere cannot run code when --resume loads it (a file that would is refused, CheckpointError)."""

import os
import pickle
import random
import re
import shutil
import signal
import threading

import numpy as np
import torch
import torch.distributed as dist

from harness.distributed import compute_device, world
from harness.logs import truncate_jsonl


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be loaded safely: one line, no traceback."""


def seed_everything(seed):
    """Python's, numpy's and torch's global RNGs."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state():
    """This rank's RNG states as tensors and plain data (weights_only loads them): Python's,
    numpy's (its key array as a list), torch's CPU generator and the CUDA generator of this rank's
    own device (cuda:LOCAL_RANK), not every visible device's."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [name, keys.tolist(), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(compute_device()) if torch.cuda.is_available() else None,
    }


def set_rng_state(s):
    """rng_state() back; the CUDA state goes to this rank's own device, whichever index it has
    here (a resume may see fewer GPUs than the run that saved)."""
    name, keys, pos, has_gauss, gauss = s["numpy"]
    random.setstate(s["python"]), torch.set_rng_state(s["torch"])
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    if s["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(s["cuda"], compute_device())


def load_plain(path):
    """torch.load(path, weights_only=True): tensors and plain Python data. A file holding anything
    else (a pickled callable would run when loaded) is refused with a one-line CheckpointError;
    nothing in it runs."""
    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))  # what unpickling would have imported
        raise CheckpointError(
            f"{path}: refused: it holds Python objects, not only tensors and plain data"
            f"{f' ({found.group(1)})' if found else ''}; a checkpoint is loaded with "
            "torch.load(weights_only=True) and never runs code"
        ) from e


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
    saved = load_plain(os.path.join(ckpt, "trainer.pt"))
    optimizer.load_state_dict(saved.pop("optimizer"))
    scheduler.load_state_dict(saved.pop("scheduler"))
    state.update({k: v for k, v in saved.items() if k in state})
    rng_file = os.path.join(ckpt, f"rng-{rank}.pt")
    if os.path.exists(rng_file):
        set_rng_state(load_plain(rng_file))
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
