"""Triton kernels for the 16-bit target's linear layers at decode sizes: y = x @ w^T for 1..16 rows of x.

A decode step (one row) or a verify pass (up to 16 rows) multiplies every weight matrix once, so at batch 1
it is bound by reading the weights. cuBLAS's kernels read them at 2.1-2.9 TB/s on an H100 (the N=4096
shapes split K and add a reduction kernel). Here one program streams BLOCK_N rows of the weight in slices
of BLOCK_K columns:
- `_gemv_kernel` (one row of x): multiply-adds in float32, 2.5-3.2 TB/s, 5-14% faster than cuBLAS at every
  Baichuan2-7B shape;
- `_rows_kernel` (2..16 rows): x padded to 16 rows, tensor cores (`tl.dot`), as fast as cuBLAS (down_proj)
  to 10% faster.
Both sum in float32, as cuBLAS does. docs/performance.md has the measurements. Importing this module without
Triton is fine: `supported()` says False.
"""
import torch

from . import launch

try:
    import triton
    import triton.language as tl

    from .launch import let_next_kernel_launch, wait_for_inputs
except ImportError:  # CPU-only installs
    triton = None

MAX_ROWS = 16  # rows of x per call (tl.dot's smallest tile)


def supported(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether `matmul` serves x [..., K] (1..16 rows) times this weight [N, K]."""
    return (triton is not None and x.is_cuda and x.dtype in (torch.float16, torch.bfloat16)
            and weight.dtype == x.dtype and x.numel() <= MAX_ROWS * weight.shape[1] and weight.is_contiguous())


if triton is not None:

    @triton.jit
    def _gemv_kernel(x_ptr, w_ptr, y_ptr, N, K, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        cols = tl.arange(0, BLOCK_K)
        wait_for_inputs(PDL)
        acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + cols
            k_ok = k < K
            w = tl.load(w_ptr + rows[:, None] * K + k[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            x = tl.load(x_ptr + k, mask=k_ok, other=0.0)
            acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
        let_next_kernel_launch(PDL)
        tl.store(y_ptr + rows, tl.sum(acc, axis=1).to(y_ptr.dtype.element_ty), mask=row_ok)

    @triton.jit
    def _rows_kernel(x_ptr, w_ptr, y_ptr, M, N, K, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     PDL: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        m = tl.arange(0, BLOCK_M)
        m_ok = m < M
        cols = tl.arange(0, BLOCK_K)
        wait_for_inputs(PDL)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + cols
            k_ok = k < K
            w = tl.load(w_ptr + rows[:, None] * K + k[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            x = tl.load(x_ptr + m[:, None] * K + k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            acc = tl.dot(x, tl.trans(w), acc)
        let_next_kernel_launch(PDL)
        tl.store(y_ptr + m[:, None] * N + rows[None, :], acc.to(y_ptr.dtype.element_ty),
                 mask=m_ok[:, None] & row_ok[None, :])

    # The best of 36 (one row) and 54 (nine rows) configurations on an H100 at the 7B shapes, weights read
    # from DRAM: each of these was within 1-4% of the best at every shape.
    _gemv_tuned = launch.autotune(
        configs=[
            triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
            for bn, bk, w, s in [(16, 1024, 8, 3), (16, 1024, 8, 2), (4, 1024, 8, 2), (4, 512, 8, 3)]
        ],
        key=["N", "K"],
    )(_gemv_kernel)
    _rows_tuned = launch.autotune(
        configs=[
            triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=4, num_stages=s)
            for bn, bk, s in [(32, 128, 4), (32, 512, 3), (32, 512, 4), (64, 128, 4)]
        ],
        key=["N", "K"],
    )(_rows_kernel)


def matmul(x: torch.Tensor, weight: torch.Tensor, blocks=None) -> torch.Tensor:
    """x [..., K] (1..16 rows) times weight [N, K]: [..., N] (see `supported`).

    `blocks=(BLOCK_N, BLOCK_K)` skips autotuning (Triton's CPU interpreter cannot time configs)."""
    n, k = weight.shape
    flat = x.reshape(-1, k).contiguous()
    m = flat.shape[0]
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if blocks is not None:
        grid = (triton.cdiv(n, blocks[0]),)
        if m == 1:
            _gemv_kernel[grid](flat, weight, y, n, k, BLOCK_N=blocks[0], BLOCK_K=blocks[1], PDL=False)
        else:
            _rows_kernel[grid](flat, weight, y, m, n, k, BLOCK_M=MAX_ROWS, BLOCK_N=blocks[0], BLOCK_K=blocks[1], PDL=False)
    else:
        grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
        if m == 1:
            _gemv_tuned[grid](flat, weight, y, n, k, PDL=launch.enabled, launch_pdl=launch.enabled)
        else:
            _rows_tuned[grid](flat, weight, y, m, n, k, BLOCK_M=MAX_ROWS, PDL=launch.enabled, launch_pdl=launch.enabled)
    return y.view(*x.shape[:-1], n)
