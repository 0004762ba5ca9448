"""Top-k over the vocabulary on CUDA: the greedy pick (k = 1, with the argmax's softmax probability) and
the candidates of top-k sampling.

The draft's stopping rule needs the argmax and its probability after every draft step (and the second
largest, where a verify pass checks the draft's second choices too), the target its
argmax after every step, sampling the top k logits. torch takes a float copy, a softmax and a max over the
whole row for the first (62 us on an H100 for Baichuan2's 125,696 logits), 0.1 ms for a top-k, and its
reductions over one long row keep few SMs busy. Here blocks of the row are reduced in parallel and then
merged per row: two short kernels, 4-5 us for the greedy pick (docs/performance.md). `greedy` and
`largest` are what sampling calls: these kernels where they serve, torch elsewhere.
"""
import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs
    triton = None

MAX_K = 32  # each of the k picks is a reduction over a block: a larger k takes the torch path


def serves(logits: torch.Tensor, k: int = 1) -> bool:
    return triton is not None and logits.device.type == "cuda" and 1 <= k <= min(MAX_K, logits.shape[-1])


if triton is not None:

    @triton.jit
    def _block_top_k_kernel(x_ptr, value_ptr, index_ptr, total_ptr, V, stride, K: tl.constexpr, BLOCK: tl.constexpr):
        # Program (row, b) reduces logits [b * BLOCK, (b + 1) * BLOCK) of its row: its k largest, the larger
        # first and the lower index first among equals (tl.argmax keeps the first), and the sum of
        # exp(x - largest) for the argmax's probability.
        row = tl.program_id(0).to(tl.int64)
        b = tl.program_id(1)
        i = tl.arange(0, BLOCK)
        x = tl.load(x_ptr + row * stride + b * BLOCK + i, mask=b * BLOCK + i < V, other=-float("inf")).to(tl.float32)
        out = row * tl.num_programs(1) + b
        best = tl.max(x, axis=0)
        # -inf logits (float16 overflow) weigh nothing, as in softmax; a block of only -inf sums to 0, not NaN.
        tl.store(total_ptr + out, tl.sum(tl.exp(x - tl.where(best == -float("inf"), 0.0, best)), axis=0))
        for j in tl.static_range(K):
            top = tl.argmax(x, axis=0)
            tl.store(value_ptr + out * K + j, tl.max(x, axis=0))
            tl.store(index_ptr + out * K + j, tl.minimum(b * BLOCK + top, V - 1))  # past the row: only for -inf
            x = tl.where(i == top, -float("inf"), x)

    @triton.jit
    def _merge_top_k_kernel(value_ptr, index_ptr, total_ptr, top_value_ptr, top_index_ptr, prob_ptr, blocks,
                            K: tl.constexpr, CANDIDATES: tl.constexpr, BLOCKS: tl.constexpr):
        # One program per row picks its k largest among the blocks' candidates (block by block, so the
        # first of equal values is still the lower index) and rescales the blocks' sums to the row's
        # maximum, as online softmax does. Once only -inf is left (a row with fewer than k finite logits),
        # a pick may repeat an index, with value -inf. NaN logits (a model whose activations overflow) fail
        # every comparison, so argmax may land on a masked slot: clamped, the index read stays in the row.
        row = tl.program_id(0).to(tl.int64)
        c = tl.arange(0, CANDIDATES)
        values = tl.load(value_ptr + row * blocks * K + c, mask=c < blocks * K, other=-float("inf"))
        b = tl.arange(0, BLOCKS)
        maxima = tl.load(value_ptr + (row * blocks + b) * K, mask=b < blocks, other=-float("inf"))
        totals = tl.load(total_ptr + row * blocks + b, mask=b < blocks, other=0.0)
        best = tl.max(maxima, axis=0)
        tl.store(prob_ptr + row, 1.0 / tl.sum(tl.where(b < blocks, totals * tl.exp(maxima - best), 0.0), axis=0))
        for j in tl.static_range(K):
            top = tl.minimum(tl.argmax(values, axis=0), blocks * K - 1)
            tl.store(top_value_ptr + row * K + j, tl.max(values, axis=0))
            tl.store(top_index_ptr + row * K + j, tl.load(index_ptr + row * blocks * K + top).to(tl.int64))
            values = tl.where(c == top, -float("inf"), values)


def top_k(logits: torch.Tensor, k: int, block: int = 2048, num_warps: int = 4):
    """logits [..., V] -> (the k largest as float32 [..., k], descending, the lower index first among equals;
    their indices [..., k] int64; the softmax probability of the largest [...] float32)."""
    v = logits.shape[-1]
    rows = logits.reshape(-1, v)
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    n, blocks = rows.shape[0], triton.cdiv(v, block)
    values = torch.empty(n, blocks, k, dtype=torch.float32, device=logits.device)
    indices = torch.empty(n, blocks, k, dtype=torch.int32, device=logits.device)
    totals = torch.empty(n, blocks, dtype=torch.float32, device=logits.device)
    _block_top_k_kernel[(n, blocks)](rows, values, indices, totals, v, rows.stride(0), K=k, BLOCK=block,
                                     num_warps=num_warps)
    top_values = torch.empty(n, k, dtype=torch.float32, device=logits.device)
    top_indices = torch.empty(n, k, dtype=torch.int64, device=logits.device)
    probs = torch.empty(n, dtype=torch.float32, device=logits.device)
    _merge_top_k_kernel[(n,)](values, indices, totals, top_values, top_indices, probs, blocks, K=k,
                              CANDIDATES=triton.next_power_of_2(blocks * k), BLOCKS=triton.next_power_of_2(blocks))
    shape = logits.shape[:-1]
    return top_values.view(*shape, k), top_indices.view(*shape, k), probs.view(shape)


def argmax_and_prob(logits: torch.Tensor):
    """logits [..., V] -> (argmax [...] int64, the first index on ties as torch.argmax; its softmax
    probability [...] float32)."""
    _, indices, probs = top_k(logits, 1)
    return indices[..., 0], probs


def greedy(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(argmax, its softmax probability in float32) over the last dimension of logits; the first index on
    ties, as torch.argmax."""
    if serves(logits):
        return argmax_and_prob(logits)
    tokens = logits.argmax(-1)
    return tokens, logits.float().softmax(-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def greedy_two(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the argmax and the next largest logit's index [..., 2], ties to the lower index; the argmax's softmax
    probability in float32)."""
    if serves(logits, 2):
        _, indices, probs = top_k(logits, 2)
        return indices, probs
    first, probs = greedy(logits)
    second = logits.scatter(-1, first.unsqueeze(-1), float("-inf")).argmax(-1)
    return torch.stack((first, second), -1), probs


def largest(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(the k largest logits in float32, their ids), the largest first; of ties with the k-th, the lower
    ids with the kernel, torch.topk's choice elsewhere."""
    if serves(logits, k):
        return top_k(logits, k)[:2]
    return torch.topk(logits.float(), k, dim=-1)
