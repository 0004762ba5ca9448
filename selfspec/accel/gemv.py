"""Triton kernel for the 16-bit target's linear layers at decode sizes: y = x @ w^T for 1..16 rows of x.

A decode step (one row) or a verify pass (up to 16 rows) multiplies every weight matrix once, so at batch 1
it is bound by reading the weights. One program streams BLOCK_N rows of the weight in slices of BLOCK_K
columns and multiplies each slice with all rows of x at once on the tensor cores (x padded to 16 rows),
summing in float32. On an H100 that reads the weights 0-10% faster than cuBLAS at the Baichuan2-7B shapes
(docs/performance.md), for one row and for nine.

The same compiled kernel serves every row count, and a tensor-core product's row does not depend on the
other rows, so a verify pass over k+1 tokens gives exactly the logits of k+1 one-token steps, in float16
too: greedy self-speculative decoding then equals plain decoding token for token. (A plain float32 GEMV
for one row was 4% faster still, but rounded differently from the verify pass and split the outputs of
plain and speculative decoding at near-ties.) `GemvLinear` is model.Linear with this kernel swapped in
(accel.use_kernels). Importing this module without Triton is fine.
"""
import torch
import torch.nn.functional as F

from ..model import Linear
from . import launch
from .launch import MAX_VERIFY_TOKENS

try:
    import triton
    import triton.language as tl

    from .launch import let_next_kernel_launch, wait_for_inputs
except ImportError:  # CPU-only installs
    triton = None



def serves(weight: torch.Tensor) -> bool:
    """Whether `matmul` serves this weight [N, K]: 16-bit on CUDA (float32 stays with cuBLAS)."""
    return (triton is not None and weight.is_cuda and weight.dtype in (torch.float16, torch.bfloat16)
            and weight.is_contiguous())


if triton is not None:

    @triton.jit
    def load_tile(ptr, rows, row_ok, k, K):
        """Rows `rows` (those with row_ok) by columns `k` of a row-major matrix [*, K]; zero outside it."""
        return tl.load(ptr + rows[:, None] * K + k[None, :], mask=row_ok[:, None] & (k < K)[None, :], other=0)

    @triton.jit
    def _matmul_kernel(x_ptr, w_ptr, y_ptr, M, N, K, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_K: tl.constexpr, PDL: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        m = tl.arange(0, BLOCK_M)
        cols = tl.arange(0, BLOCK_K)
        wait_for_inputs(PDL)
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            w = load_tile(w_ptr, rows, row_ok, k0 + cols, K)
            x = load_tile(x_ptr, m, m < M, k0 + cols, K)
            acc = tl.dot(w, tl.trans(x), acc)
        let_next_kernel_launch(PDL)
        tl.store(y_ptr + m[None, :] * N + rows[:, None], acc.to(y_ptr.dtype.element_ty),
                 mask=(m < M)[None, :] & row_ok[:, None])

    # The best of 54 configurations on an H100 at the 7B shapes (weights read from DRAM, one row and nine).
    # Tuned per weight shape, not per row count: every row count must run the same configuration.
    _matmul_tuned = launch.autotune(
        configs=[
            triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=4, num_stages=s)
            for bn, bk, s in [(64, 256, 4), (32, 256, 5), (64, 128, 4), (128, 128, 4), (32, 128, 4)]
        ],
        key=["N", "K"],
    )(_matmul_kernel)


def matmul(x: torch.Tensor, weight: torch.Tensor, blocks=None) -> torch.Tensor:
    """x [..., K] (1..MAX_VERIFY_TOKENS rows) times weight [N, K] (see `serves`): [..., N].

    `blocks=(BLOCK_N, BLOCK_K)` skips autotuning (Triton's CPU interpreter cannot time configs)."""
    n, k = weight.shape
    flat = x.reshape(-1, k).contiguous()
    y = torch.empty(flat.shape[0], n, dtype=x.dtype, device=x.device)
    args = (flat, weight, y, flat.shape[0], n, k)
    if blocks is None:
        grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
        _matmul_tuned[grid](*args, BLOCK_M=MAX_VERIFY_TOKENS, PDL=launch.enabled, launch_pdl=launch.enabled)
    else:
        _matmul_kernel[(triton.cdiv(n, blocks[0]),)](*args, BLOCK_M=MAX_VERIFY_TOKENS, BLOCK_N=blocks[0], BLOCK_K=blocks[1],
                                                     PDL=False)
    return y.view(*x.shape[:-1], n)


class GemvLinear(Linear):
    """model.Linear on a weight that `serves`: decode-sized products (up to MAX_VERIFY_TOKENS rows) in
    `matmul`, longer ones (prefills) in cuBLAS."""

    def forward(self, x):
        if x.numel() <= MAX_VERIFY_TOKENS * self.in_features:
            return matmul(x, self.weight)
        return F.linear(x, self.weight)
