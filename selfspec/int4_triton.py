"""Triton matrix-vector kernel for the INT4 draft: y = x @ (q * scale)^T, fp16/bf16 activations.

The draft only ever runs one token at a time, so this is a GEMV: each program streams BLOCK_N packed
weight rows once and unpacks both nibbles of every byte. GROUP/2 must be a power of two (32, 64, 128). Rows of x (M > 1) are separate programs. Triton also targets Intel GPUs, so the same
kernel can serve `xpu`. Importing this module without Triton is fine: `available()` says False.
"""
import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs
    triton = None


def available(device: torch.device) -> bool:
    return triton is not None and device.type in ("cuda", "xpu")


if triton is not None:

    @triton.jit
    def _int4_gemv_kernel(
        x_ptr, w_ptr, s_ptr, y_ptr, N, K, stride_xm, stride_ym,
        GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr,
    ):
        # Tiles are [BLOCK_N rows, BLOCK_G groups, GROUP/2 bytes]: weight bytes load as contiguous
        # vectors, each group's scale loads once and broadcasts. Low nibbles pair with the first half of
        # each group's activations, high nibbles with the second half (quantize.pack_nibbles).
        HALF: tl.constexpr = GROUP // 2
        pid_n = tl.program_id(0)
        m = tl.program_id(1)
        rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        n_groups = K // GROUP
        g = tl.arange(0, BLOCK_G)
        j = tl.arange(0, HALF)
        acc = tl.zeros((BLOCK_N, BLOCK_G, HALF), dtype=tl.float32)
        for g0 in range(0, n_groups, BLOCK_G):
            groups = g0 + g
            g_ok = groups < n_groups
            ok = row_ok[:, None] & g_ok[None, :]
            w = tl.load(
                w_ptr + rows[:, None, None] * (K // 2) + groups[None, :, None] * HALF + j[None, None, :],
                mask=ok[:, :, None], other=0x88,
            )
            scale = tl.load(s_ptr + rows[:, None] * n_groups + groups[None, :], mask=ok, other=0.0).to(tl.float32)
            x_ptrs = x_ptr + m * stride_xm + groups[:, None] * GROUP + j[None, :]
            x_low = tl.load(x_ptrs, mask=g_ok[:, None], other=0.0).to(tl.float32)
            x_high = tl.load(x_ptrs + HALF, mask=g_ok[:, None], other=0.0).to(tl.float32)
            low = (w & 0xF).to(tl.float32) - 8.0
            high = (w >> 4).to(tl.float32) - 8.0
            acc += (low * x_low[None, :, :] + high * x_high[None, :, :]) * scale[:, :, None]
        y = tl.sum(tl.sum(acc, axis=2), axis=1)
        tl.store(y_ptr + m * stride_ym + rows, y.to(y_ptr.dtype.element_ty), mask=row_ok)

    # Tuned per weight shape on first use (outside graph capture: the capture's warm-up runs it first).
    _int4_gemv_tuned = triton.autotune(
        configs=[
            triton.Config({"BLOCK_N": bn, "BLOCK_G": bg}, num_warps=w, num_stages=s)
            for bn, bg, w, s in [  # the best of a sweep on an H100 (scripts/int4_kernel_lab.py), plus wider tiles
                (1, 16, 2, 2), (1, 16, 2, 3), (4, 16, 4, 3), (8, 16, 4, 3), (16, 8, 4, 3), (8, 8, 4, 3),
                (2, 32, 4, 3), (8, 32, 8, 3),
            ]
        ],
        key=["N", "K"],
    )(_int4_gemv_kernel)


def int4_matmul(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, group_size: int, blocks=None) -> torch.Tensor:
    """x [..., K] times the packed INT4 weight [N, K/2] (see quantize.pack_nibbles), scales [N, K/group].

    `blocks=(BLOCK_N, BLOCK_G)` skips autotuning (Triton's CPU interpreter cannot time configs)."""
    n, k = packed.shape[0], packed.shape[1] * 2
    flat = x.reshape(-1, k)
    if flat.stride(-1) != 1:
        flat = flat.contiguous()
    y = torch.empty(flat.shape[0], n, dtype=x.dtype, device=x.device)
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), flat.shape[0])  # noqa: E731
    if blocks is None:
        _int4_gemv_tuned[grid](flat, packed, scales, y, n, k, flat.stride(0), y.stride(0), GROUP=group_size)
    else:
        _int4_gemv_kernel[grid](flat, packed, scales, y, n, k, flat.stride(0), y.stride(0), GROUP=group_size,
                                BLOCK_N=blocks[0], BLOCK_G=blocks[1])
    return y.view(*x.shape[:-1], n)
