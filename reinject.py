"""Re-injection: expand, then sharpen (arXiv 2603.23871, the future work its conclusion names:
re-inject former cliff prompts into RL after a delay). An opt-in extension of hdpo.train, off by
default (--reinject-delay 0), joined to the loop at two places:

    again = reinject.take_due(state, args)                 # before the step
    ...
    requeued = reinject.after_update(state, args, ...)     # after the optimiser step

Distillation expands what the model can do on a cliff prompt; --reinject-delay D steps after a
cliff's distillation ran, the prompt returns to an RL batch, where GRPO gets a gradient from it as
soon as one of its G rollouts succeeds. The queue is state["reinject_queue"], a list of
(step distilled, training-row index), oldest first: it is saved in every checkpoint, and under
torchrun it is the same on every rank (the distilled prompts of all ranks are gathered).
"""

import torch
import torch.distributed as dist

from harness.distributed import all_sum, world

# ----------------------------------------------------------------------------------------------
# The queue: pure functions on lists.


def take(queue, step, delay, cap):
    """The prompts due at `step` (distilled at step s with s + delay <= step), oldest first, at
    most `cap`. -> (their training-row indices, the queue without them)."""
    by_age = sorted(range(len(queue)), key=lambda k: queue[k][0])  # stable: queue order on ties
    due = [k for k in by_age if queue[k][0] + delay <= step][:cap]
    taken = set(due)
    return [queue[k][1] for k in due], [e for k, e in enumerate(queue) if k not in taken]


def enqueue(queue, indices, step):
    """Append (step, i) for each training-row index i distilled at `step`, in order. A prompt
    still queued (drawn again from the stream and distilled again before its re-injection) keeps
    its place: one entry per prompt. -> the new queue."""
    queued = {i for _, i in queue}
    return queue + [(step, i) for i in dict.fromkeys(indices) if i not in queued]


# ----------------------------------------------------------------------------------------------
# The two places in hdpo.train's loop, and the step's statistics.


def take_due(state, args):
    """Before the step: the coming step's re-injected prompts (training-row indices), taken off
    the queue: at most min(--reinject-max, --prompts-per-step), distilled at least
    --reinject-delay steps ago. [] when re-injection is off. hdpo.next_prompts puts them in the
    last places of the step's prompts, in place of fresh ones (which are deferred, not dropped)."""
    if not args.reinject_delay:
        return []
    cap = min(args.reinject_max, args.prompts_per_step)
    again, state["reinject_queue"] = take(
        state["reinject_queue"], state["step"] + 1, args.reinject_delay, cap
    )
    return again


def after_update(state, args, batch, owners, correct, update):
    """After the optimiser step: the cliff prompts whose distillation ran in this update (at least
    one R = 1 privileged rollout distilled, and the update applied) join the queue with this
    step's number. batch: hdpo.Batch; owners, correct: the privileged rollouts' prompt (index in
    the batch) and R = 1 flag. Every rank's are gathered (rank order, then batch order) and every
    rank enqueues the same list, so the queue is global. -> the number of prompts queued."""
    if not args.reinject_delay:
        return 0
    ok_owners = [i for i, ok in zip(owners, correct) if ok]
    distilled = [] if update["skipped"] else [batch.indices[i] for i in ok_owners]
    if world()[1] > 1:
        gathered = [None] * world()[1]
        dist.all_gather_object(gathered, distilled)
        distilled = [i for g in gathered for i in g]
    queue = state["reinject_queue"]
    state["reinject_queue"] = enqueue(queue, distilled, state["step"])
    return len(state["reinject_queue"]) - len(queue)


def statistics(step, state, device):
    """The step's re-injected prompts, how many of them were solved (at least one correct rollout)
    and how many were cliffs again (summed over ranks); the prompts queued this step and the
    queue's length after it (global already). step: hdpo.Step."""
    again = torch.tensor(step.batch.reinjected, dtype=torch.bool)  # [P] re-injected prompts
    solved = again & (step.rewards.sum(1) > 0)  # [P]
    local = [again.sum(), solved.sum(), (again & step.cliffs).sum()]
    n, n_solved, cliff_again = all_sum(local, device)
    return {
        "reinjected": int(n),
        "reinjected_solved": int(n_solved),
        "reinjected_cliffs": int(cliff_again),
        "reinject_queued": step.requeued,
        "reinject_queue": len(state["reinject_queue"]),
    }
