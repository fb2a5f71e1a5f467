"""Experiment trackers (--report-to): optional packages, each imported only when asked for, fed on
rank 0 only, all working offline. They receive what the JSONL logs hold: every metrics.jsonl row
under its own names (its val_* copies left out: validation comes once, below), every eval.jsonl
row under eval/<key> (eval/best/<key> for the best so far), and the step's samples.jsonl
completions as a table (a markdown table in TensorBoard's text tab)."""

import importlib
import json
import math
import os

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


def require_trackers(names):
    """Import each --report-to tracker now: a missing package stops a run before anything loads."""
    for name in names:
        if name != "none":
            import_tracker(name)
