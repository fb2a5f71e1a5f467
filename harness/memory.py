"""Memory: the plan that sizes a GPU step's micro-batches (and turns gradient checkpointing on)
before the first step rather than after an out-of-memory error, and the CPU allocator setting."""

import torch


def keep_freed_memory():
    """CPU training: let glibc keep freed memory for reuse instead of handing every large block
    back to the OS and faulting it in again (zeroed) at the next micro-batch. Each micro-batch
    frees and re-allocates its activations and [V, H] gradients. Measured on SmolLM2-135M, 2-core
    CPU, at the CPU default --micro-batch-tokens 512 (dev/LOG.md, 2026-12-06): steps ~11%
    shorter, peak resident memory unchanged. No-op off glibc. Returns whether it was applied."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    largest = ctypes.c_int(2**31 - 1)
    # M_MMAP_THRESHOLD (-3): blocks below it come from the heap; M_TRIM_THRESHOLD (-1): free
    # heap top kept up to this many bytes
    return bool(libc.mallopt(-3, largest)) and bool(libc.mallopt(-1, largest))


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
    """What a step holds whatever its length, in two parts -> (resident, added):
    - resident: what loading the models put on the card: the fp32 weights (4 bytes a parameter)
      and a frozen teacher;
    - added: what training adds to them: gradients and AdamW's two moments (12 bytes a
      parameter), the bf16 copies autocast makes of the weights (2), the engine's bf16 generation
      copy (2, engine._generation_model), the all-reduce bucket under torchrun (256 MB), and
      three [chunk, V] fp32 buffers of the lm_head (at most 2.5 are alive at once: the backward's
      buffer, its soft-cap buffer, the bf16 copy of its gradient)."""
    bucket = 2**28 if world_size > 1 else 0
    resident = n_params * 4 + frozen_teacher_bytes
    return resident, n_params * 16 + bucket + 3 * logit_chunk * vocab * 4


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
    """On a GPU, after the policy (and a frozen teacher of teacher_bytes) are loaded: measure the
    activations per token (with and without gradient checkpointing), hand the probes' memory back
    to the card, read its free memory (what is loaded is already used), subtract what training
    adds to it (fixed_training_bytes' added part; the resident part is in use already, not
    counted twice), and choose --micro-batch-tokens (unless given) and gradient checkpointing
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
    resident, added = fixed_training_bytes(
        n_params, vocab, args.logit_chunk, teacher_bytes, world_size
    )
    torch.cuda.empty_cache()  # the probes' activations, cached by the allocator, back to the card
    free, total = torch.cuda.mem_get_info(device)
    budget = 0.9 * total - (total - free)  # 10% for the allocator's fragmentation and NCCL
    tokens, ckpt, fits = plan_micro_batch_tokens(
        budget, added, per_token, per_token_ckpt, args.max_seq_len
    )
    if args.micro_batch_tokens is None:
        args.micro_batch_tokens = tokens
    if ckpt and not args.gradient_checkpointing:
        set_checkpointing(model, True)
        args.gradient_checkpointing = True
    gib = lambda b: f"{b / 2**30:.1f} GiB"
    line = (
        f"memory: {gib(total)} card, {gib(total - free)} in use (weights {gib(resident)}), "
        f"training adds {gib(added)}, activations {per_token / 2**10:.0f} KiB/"
        f"token ({per_token_ckpt / 2**10:.0f} with checkpointing) -> --micro-batch-tokens "
        f"{args.micro_batch_tokens}, gradient checkpointing {'on' if ckpt else 'off'}"
    )
    if not fits:
        line += f" | WARNING: one {args.max_seq_len}-token sequence may not fit in this card"
    return line
