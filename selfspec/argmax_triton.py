"""The greedy pick on CUDA: each row's argmax over the vocabulary and its softmax probability.

The draft's stopping rule needs both after every draft step, the target its argmax after every step. torch
takes a float copy, a softmax and a max over the whole row for that, and its reductions over one long row
keep few SMs busy: 66 us on an H100 for Baichuan2's 125,696 logits, in the gap where the host waits to
decide on the next draft step. Here blocks of the row are reduced in parallel and then merged: two short
kernels (docs/performance.md).
"""
import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs
    triton = None


def supported(logits: torch.Tensor) -> bool:
    return triton is not None and logits.device.type == "cuda"


if triton is not None:

    @triton.jit
    def _block_argmax_kernel(x_ptr, max_ptr, index_ptr, total_ptr, V, stride, BLOCK: tl.constexpr):
        # Program (row, b) reduces logits [b * BLOCK, (b + 1) * BLOCK) of its row: the maximum, its index
        # (tl.argmax: the first on ties) and the sum of exp(x - maximum).
        row = tl.program_id(0).to(tl.int64)
        b = tl.program_id(1)
        cols = b * BLOCK + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + row * stride + cols, mask=cols < V, other=-float("inf")).to(tl.float32)
        best = tl.max(x, axis=0)
        out = row * tl.num_programs(1) + b
        tl.store(max_ptr + out, best)
        tl.store(index_ptr + out, b * BLOCK + tl.argmax(x, axis=0))
        # -inf logits (float16 overflow) weigh nothing, as in softmax; a block of only -inf sums to 0, not NaN.
        tl.store(total_ptr + out, tl.sum(tl.exp(x - tl.where(best == -float("inf"), 0.0, best)), axis=0))

    @triton.jit
    def _merge_kernel(max_ptr, index_ptr, total_ptr, token_ptr, prob_ptr, blocks, BLOCKS: tl.constexpr):
        # One program per row merges its blocks: the first block holding the maximum has the first index of
        # it, and the sums are rescaled to the row's maximum, as in online softmax.
        row = tl.program_id(0).to(tl.int64)
        i = tl.arange(0, BLOCKS)
        ok = i < blocks
        maxima = tl.load(max_ptr + row * blocks + i, mask=ok, other=-float("inf"))
        best = tl.max(maxima, axis=0)
        first = tl.argmax(maxima, axis=0)
        totals = tl.load(total_ptr + row * blocks + i, mask=ok, other=0.0)
        total = tl.sum(tl.where(ok, totals * tl.exp(maxima - best), 0.0), axis=0)
        tl.store(token_ptr + row, tl.load(index_ptr + row * blocks + first).to(tl.int64))
        tl.store(prob_ptr + row, 1.0 / total)


def argmax_and_prob(logits: torch.Tensor, block: int = 2048, num_warps: int = 4):
    """logits [..., V] -> (argmax [...] int64, softmax probability of it [...] float32). Two kernels: blocks
    of `block` logits reduced in parallel, then merged per row."""
    v = logits.shape[-1]
    rows = logits.reshape(-1, v)
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    n, blocks = rows.shape[0], triton.cdiv(v, block)
    maxima, totals = (torch.empty(n, blocks, dtype=torch.float32, device=logits.device) for _ in range(2))
    indices = torch.empty(n, blocks, dtype=torch.int32, device=logits.device)
    _block_argmax_kernel[(n, blocks)](rows, maxima, indices, totals, v, rows.stride(0), BLOCK=block, num_warps=num_warps)
    tokens = torch.empty(n, dtype=torch.int64, device=logits.device)
    probs = torch.empty(n, dtype=torch.float32, device=logits.device)
    _merge_kernel[(n,)](maxima, indices, totals, tokens, probs, blocks, BLOCKS=triton.next_power_of_2(blocks))
    return tokens.view(logits.shape[:-1]), probs.view(logits.shape[:-1])
