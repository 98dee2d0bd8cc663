"""Cross-entropy over a large vocabulary without materialising the logits.

The output layer turns N hidden vectors (N = batch x context) into N x V logits. With GPT-2's 50,257
tokens and N = 1,024 that is 206 MB in fp32, and training keeps it around twice (the logits and their
gradient), more under autocast (a bf16 copy); with Qwen2's 151,936 tokens and N = 4,096 it is 2.5 GB
each. Yet the loss needs only two numbers per row: the log-sum-exp of the row and the target's logit.

So the rows go through in chunks: a chunk's logits are computed, reduced to its loss, and turned into
the gradients right away (d loss / d logits = softmax - one_hot(target)), which flow into the gradients
of the hidden states and of the output weight; then the chunk's logits are dropped. The gradients are
kept for backward, which only scales them by the incoming gradient (the loss is a scalar). This is the
approach of Liger Kernel's fused linear cross-entropy and Apple's Cut Cross-Entropy, in plain PyTorch.
The matmuls are the same ones the unchunked loss does; what goes is the big buffer.

On a GPU the vocabulary is padded to a multiple of 64 inside the matmuls (zero rows in the weight, -inf
in the padded logit columns, so the loss and gradients are unchanged). A logits row of GPT-2's 50,257
entries is not a multiple of 8 elements, and on an H200 cuBLAS then falls back to old unaligned kernels:
the three output-layer matmuls of a GPT-2 124M step took 40 of its 81 ms of GPU time
(bench/profile_step.py). nanoGPT pads its vocabulary to 50,304 for the same reason; here the model keeps
its true size. On a CPU the padding would only cost a copy of the weight, so it is not done there.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100
CHUNK_LOGITS = 1 << 24  # logits per chunk: 16M floats = 64 MB (smaller chunks make the matmuls slower)
VOCAB_MULTIPLE = {"cuda": 64}  # per device type: the matmuls see the vocabulary padded to a multiple of this


def chunk_rows(vocab_size: int) -> int:
    return max(64, CHUNK_LOGITS // vocab_size)


def worth_chunking(n_rows: int, vocab_size: int) -> bool:
    """Chunk only logits bigger than one chunk: small ones are cheap, and torch.compile can fuse the plain loss."""
    return n_rows * vocab_size > CHUNK_LOGITS


# torch.compile would try to trace the chunk loop and the hand-written backward; it runs eagerly instead.
@torch.compiler.disable
def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Summed cross-entropy of logits = hidden @ weight.T against targets, computed chunk by chunk.

    hidden (..., C), weight (V, C), targets (...) with ignore_index where a position does not count.
    Under autocast the matmuls run in the autocast dtype and the softmax in fp32, as the unchunked
    `F.cross_entropy(F.linear(hidden, weight).float(), ...)` does.
    """
    hidden, targets = hidden.reshape(-1, hidden.size(-1)), targets.reshape(-1)
    device_type = hidden.device.type
    compute_dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else hidden.dtype
    wants_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    if not wants_grad:
        with torch.autocast(device_type, enabled=False):
            return _chunks(hidden, weight, targets, ignore_index, compute_dtype, False, False)[0]
    return _LinearCrossEntropy.apply(hidden, weight, targets, ignore_index, compute_dtype)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, ignore_index, compute_dtype):
        with torch.autocast(hidden.device.type, enabled=False):
            loss, grad_hidden, grad_weight = _chunks(hidden, weight, targets, ignore_index, compute_dtype,
                                                     ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        # The stored gradients are those of the loss itself; the chain rule only scales them.
        if grad_hidden is not None:
            grad_hidden = grad_hidden * grad_loss.to(grad_hidden.dtype)
        if grad_weight is not None:
            # to the weight's (fp32) dtype first: a loss scaler's large factor must not overflow fp16/bf16
            grad_weight = grad_weight.to(ctx.weight_dtype) * grad_loss
        return grad_hidden, grad_weight, None, None, None


def _chunks(hidden, weight, targets, ignore_index, compute_dtype, grad_hidden_wanted, grad_weight_wanted):
    """(summed loss, d loss / d hidden or None, d loss / d weight or None), chunk by chunk."""
    n_rows, vocab = hidden.size(0), weight.size(0)
    w = padded_rows(weight, VOCAB_MULTIPLE.get(hidden.device.type, 1), compute_dtype)
    loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
    grad_hidden = torch.empty_like(hidden) if grad_hidden_wanted else None
    # Summed over chunks in the matmul dtype, as the unchunked backward's one product is rounded to it.
    grad_weight = torch.empty(w.shape, dtype=compute_dtype, device=weight.device) if grad_weight_wanted else None
    step = chunk_rows(vocab)
    for start in range(0, n_rows, step):
        rows = slice(start, start + step)
        h = hidden[rows].to(compute_dtype)
        t = targets[rows]
        counts = t != ignore_index
        safe_t = torch.where(counts, t, 0)[:, None]  # any valid index; the row is zeroed below
        # One fused pass from the (possibly bf16) logits to fp32 log-probabilities; every pass over a
        # (rows, V) chunk costs about as much as a tenth of its matmul, so they are kept few.
        logits = h @ w.T  # (n, padded V)
        if w.size(0) > vocab:
            logits[:, vocab:] = float("-inf")  # padding: probability 0, gradient 0
        log_probs = torch.log_softmax(logits, dim=-1, dtype=torch.float32)
        loss -= (log_probs.gather(1, safe_t).squeeze(1) * counts).sum()
        if grad_hidden is None and grad_weight is None:
            continue
        # d loss / d logits = softmax(logits) - one_hot(target), zero on ignored rows; reuse the buffer.
        d_logits = log_probs.exp_()
        d_logits.scatter_add_(1, safe_t, torch.full_like(safe_t, -1, dtype=d_logits.dtype))
        if d_logits.device.type != "cpu":
            d_logits.mul_(counts[:, None])  # no host sync on a GPU
        elif not counts.all():
            d_logits[~counts] = 0  # most chunks ignore no row: skip the pass
        d_logits = d_logits.to(compute_dtype)
        if grad_hidden is not None:
            grad_hidden[rows] = (d_logits @ w).to(hidden.dtype)
        if grad_weight is not None:  # in place: no (V, C) temporary per chunk
            grad_weight.addmm_(d_logits.T, h, beta=0 if start == 0 else 1)
    return loss, grad_hidden, None if grad_weight is None else grad_weight[:vocab]


def padded_rows(matrix: torch.Tensor, multiple: int, dtype: torch.dtype) -> torch.Tensor:
    """`matrix` in `dtype` with zero rows appended up to a multiple of `multiple` rows; without padding to do,
    `matrix.to(dtype)` (itself when it has that dtype already). One allocation either way."""
    extra = -matrix.size(0) % multiple
    if not extra:
        return matrix.to(dtype)
    padded = matrix.new_empty((matrix.size(0) + extra, matrix.size(1)), dtype=dtype)
    padded[:matrix.size(0)].copy_(matrix)
    padded[matrix.size(0):].zero_()
    return padded
