"""What a reader of the algorithm may skip: the harness around hdpo.train.

run.py          a training run: setup, a step's statistics and logs, validation, the end
logs.py         metrics.jsonl, samples.jsonl, eval.jsonl, args.json, the console line
checkpoint.py   checkpoints, exact resume, Ctrl-C / SIGTERM
distributed.py  torchrun: the process group, sums over ranks, the gradient all-reduce
memory.py       the GPU memory plan (micro-batch size, checkpointing), the CPU allocator
trackers.py     --report-to tensorboard | wandb | trackio (optional packages)
loading.py      a model and tokenizer from a folder or the hub, with one-line errors
offline.py      a random-weight Qwen2 with the real tokenizer, for tests and benchmarks
report.py       runs beside the paper's Table 1 (python -m harness.report RUN ...)
"""
