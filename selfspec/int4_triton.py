"""Triton matrix-vector kernel for the INT4 draft: y = x @ (q * scale)^T, fp16/bf16 activations.

The draft only ever runs one token at a time, so this is a GEMV: each program streams BLOCK_N packed
weight rows once, unpacks both nibbles of every byte, and multiplies them by the matching even and odd
elements of x. Rows of x (M > 1) are separate programs. Triton also targets Intel GPUs, so the same
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
        GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ):
        pid_n = tl.program_id(0)
        m = tl.program_id(1)
        rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        half_k = K // 2
        n_groups = K // GROUP
        j = tl.arange(0, BLOCK_K // 2)
        acc = tl.zeros((BLOCK_N, BLOCK_K // 2), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            byte = k0 // 2 + j
            k_ok = byte < half_k
            ok = row_ok[:, None] & k_ok[None, :]
            w = tl.load(w_ptr + rows[:, None] * half_k + byte[None, :], mask=ok, other=0x88)
            scale = tl.load(s_ptr + rows[:, None] * n_groups + ((2 * byte) // GROUP)[None, :], mask=ok, other=0.0)
            x_even = tl.load(x_ptr + m * stride_xm + 2 * byte, mask=k_ok, other=0.0).to(tl.float32)
            x_odd = tl.load(x_ptr + m * stride_xm + 2 * byte + 1, mask=k_ok, other=0.0).to(tl.float32)
            low = (w & 0xF).to(tl.float32) - 8.0
            high = (w >> 4).to(tl.float32) - 8.0
            acc += (low * x_even[None, :] + high * x_odd[None, :]) * scale.to(tl.float32)
        y = tl.sum(acc, axis=1)
        tl.store(y_ptr + m * stride_ym + rows, y.to(y_ptr.dtype.element_ty), mask=row_ok)

    # Tuned per weight shape on first use (outside graph capture: the capture's warm-up runs it first).
    _int4_gemv_tuned = triton.autotune(
        configs=[
            triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
            for bn, bk, w, s in [
                (4, 512, 4, 3), (8, 512, 4, 3), (8, 256, 4, 4), (16, 256, 4, 3),
                (8, 1024, 8, 2), (16, 512, 8, 3), (4, 1024, 4, 2), (32, 256, 8, 3),
            ]
        ],
        key=["N", "K"],
    )(_int4_gemv_kernel)


def int4_matmul(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, group_size: int, blocks=None) -> torch.Tensor:
    """x [..., K] times the packed INT4 weight [N, K/2] (see quantize.pack_nibbles), scales [N, K/group].

    `blocks=(BLOCK_N, BLOCK_K)` skips autotuning (Triton's CPU interpreter cannot time configs)."""
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
                                BLOCK_N=blocks[0], BLOCK_K=blocks[1])
    return y.view(*x.shape[:-1], n)
