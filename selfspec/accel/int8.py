"""Triton matrix-vector kernel for the draft's INT8 lm_head: y = (x @ q^T) * scale, one scale per row.

One program streams BLOCK_N rows of int8 weights once; rows of x (M > 1) are separate programs. Plain
Triton (no inline PTX): at one byte per weight, converting and multiplying in float32 keeps up with
memory, unlike INT4's two weights per byte. Runs on any Triton target and under the CPU interpreter.
`Int8TritonLinear` and `Int8CpuLinear` are quantize.Int8Linear with a kernel swapped in (accel.use_kernels).
"""
import torch

from ..quantize import Int8Linear
from . import launch

try:
    import triton
    import triton.language as tl

    from .gemv import load_tile
    from .launch import let_next_kernel_launch, wait_for_inputs
except ImportError:  # CPU-only installs
    triton = None


if triton is not None:

    @triton.jit
    def _int8_gemv_kernel(x_ptr, w_ptr, s_ptr, y_ptr, N, K, stride_xm, stride_ym,
                          BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr):
        m = tl.program_id(1)
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        cols = tl.arange(0, BLOCK_K)
        wait_for_inputs(PDL)
        acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + cols
            w = load_tile(w_ptr, rows, row_ok, k, K)
            x = tl.load(x_ptr + m * stride_xm + k, mask=k < K, other=0.0)
            acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
        let_next_kernel_launch(PDL)
        y = tl.sum(acc, axis=1) * tl.load(s_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
        tl.store(y_ptr + m * stride_ym + rows, y.to(y_ptr.dtype.element_ty), mask=row_ok)

    _int8_gemv_tuned = launch.autotune(
        configs=[
            triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
            for bn, bk, w, s in [(4, 512, 4, 3), (8, 256, 4, 3), (8, 512, 4, 3), (8, 512, 8, 3), (16, 256, 8, 3),
                                 (16, 512, 8, 2), (4, 1024, 8, 3), (2, 1024, 4, 4)]
        ],
        key=["N", "K"],
    )(_int8_gemv_kernel)


def int8_matmul(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor, blocks=None) -> torch.Tensor:
    """x [..., K] times the INT8 weight q [N, K] with per-row scales [N].

    `blocks=(BLOCK_N, BLOCK_K)` skips autotuning (Triton's CPU interpreter cannot time configs)."""
    n, k = q.shape
    flat = x.reshape(-1, k).contiguous()
    y = torch.empty(flat.shape[0], n, dtype=x.dtype, device=x.device)
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), flat.shape[0])  # noqa: E731
    args = (flat, q, scales, y, n, k, flat.stride(0), y.stride(0))
    if blocks is None:
        _int8_gemv_tuned[grid](*args, PDL=launch.enabled, launch_pdl=launch.enabled)
    else:
        _int8_gemv_kernel[grid](*args, BLOCK_N=blocks[0], BLOCK_K=blocks[1], PDL=False)
    return y.view(*x.shape[:-1], n)


class Int8TritonLinear(Int8Linear):
    kernel = "triton"

    def forward(self, x):
        return int8_matmul(x, self.q, self.scales)


class Int8CpuLinear(Int8Linear):
    """torch's CPU int8 kernel."""

    kernel = "cpu_int8pack"

    def forward(self, x):
        y = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, self.in_features), self.q, self.scales)
        return y.view(*x.shape[:-1], self.out_features)
