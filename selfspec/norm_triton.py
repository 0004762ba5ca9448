"""The residual add + RMS norm of decode-sized passes (1..16 rows) on CUDA, as a Triton kernel.

torch.compile fuses the same arithmetic into one kernel too, but a kernel of ours can take part in
programmatic dependent launch (launch.py): it lets the INT4 GEMV after it launch at once, and waits for
the kernel before it on the device: a draft step 2-5% shorter on an H100 (docs/performance.md).
"""
import torch

from . import launch

try:
    import triton
    import triton.language as tl

    from .launch import let_next_kernel_launch, wait_for_inputs
except ImportError:  # CPU-only installs
    triton = None


if triton is not None:

    @triton.jit
    def _add_rms_norm_kernel(x_ptr, delta_ptr, w_ptr, h_ptr, out_ptr, eps, DIM: tl.constexpr, BLOCK: tl.constexpr,
                             PDL: tl.constexpr):
        # One program per row, rounding as model.add_rms_norm does: h = x + delta in x's dtype, the
        # variance in float32, the normalised row in x's dtype, times the weight.
        let_next_kernel_launch(PDL)
        wait_for_inputs(PDL)
        row = tl.program_id(0)
        i = tl.arange(0, BLOCK)
        ok = i < DIM
        x = tl.load(x_ptr + row * DIM + i, mask=ok, other=0.0)
        h = (x + tl.load(delta_ptr + row * DIM + i, mask=ok, other=0.0)).to(x.dtype)
        tl.store(h_ptr + row * DIM + i, h, mask=ok)
        h32 = h.to(tl.float32)
        normed = (h32 * tl.rsqrt(tl.sum(h32 * h32, axis=0) / DIM + eps)).to(x.dtype)
        w = tl.load(w_ptr + i, mask=ok, other=0.0)
        tl.store(out_ptr + row * DIM + i, (w.to(tl.float32) * normed.to(tl.float32)).to(x.dtype), mask=ok)


def add_rms_norm(x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float):
    """(x + delta, RMS norm of it times weight), both shaped like x."""
    x, delta = x.contiguous(), delta.contiguous()
    h, out = torch.empty_like(x), torch.empty_like(x)
    dim = x.shape[-1]
    _add_rms_norm_kernel[(x.numel() // dim,)](x, delta, weight, h, out, eps, DIM=dim, BLOCK=triton.next_power_of_2(dim),
                                              PDL=launch.enabled, launch_pdl=launch.enabled, num_warps=4)
    return h, out
