"""A layer's pointwise work on CUDA as Triton kernels: the residual add + RMS norm after it, the first RMS
norm, and SiLU(gate) * up, for any number of rows (decode steps and prefills alike).

torch.compile would fuse the same arithmetic, but kernels of our own take part in programmatic dependent
launch (launch.py: the kernel after them may launch at once, and they wait on the device for the kernel
before them; a draft step 2-5% shorter on an H100), and the engine then needs neither TorchDynamo nor
TorchInductor, whose import and compilation were a large part of the command's start-up
(docs/performance.md). Each rounds as the eager functions in model.py do. `KernelMLP` is model.MLP with
the SiLU-multiply kernel swapped in (accel.use_kernels).
"""
import torch

from ..model import MLP
from . import launch

try:
    import triton
    import triton.language as tl

    from .launch import let_next_kernel_launch, wait_for_inputs
except ImportError:  # CPU-only installs
    triton = None


if triton is not None:

    @triton.jit
    def _rms_norm_kernel(x_ptr, delta_ptr, w_ptr, h_ptr, out_ptr, eps, DIM: tl.constexpr, BLOCK: tl.constexpr,
                         ADD: tl.constexpr, PDL: tl.constexpr):
        # One program per row. With ADD: h = x + delta in x's dtype (stored: the residual stream), else h = x;
        # the variance in float32, the normalised row in x's dtype, times the weight.
        let_next_kernel_launch(PDL)
        wait_for_inputs(PDL)
        row = tl.program_id(0).to(tl.int64)
        i = tl.arange(0, BLOCK)
        ok = i < DIM
        h = tl.load(x_ptr + row * DIM + i, mask=ok, other=0.0)
        if ADD:
            h = (h + tl.load(delta_ptr + row * DIM + i, mask=ok, other=0.0)).to(h.dtype)
            tl.store(h_ptr + row * DIM + i, h, mask=ok)
        h32 = h.to(tl.float32)
        normed = (h32 * tl.rsqrt(tl.sum(h32 * h32, axis=0) / DIM + eps)).to(h.dtype)
        w = tl.load(w_ptr + i, mask=ok, other=0.0)
        tl.store(out_ptr + row * DIM + i, (w.to(tl.float32) * normed.to(tl.float32)).to(h.dtype), mask=ok)

    @triton.jit
    def _silu_mul_kernel(gate_ptr, up_ptr, out_ptr, cols, gate_row_stride, up_row_stride, gate_col_stride,
                         up_col_stride, BLOCK: tl.constexpr, PDL: tl.constexpr):
        # silu(gate) rounded to the dtype, then times up, rounded again: F.silu(gate) * up.
        let_next_kernel_launch(PDL)
        wait_for_inputs(PDL)
        row = tl.program_id(0).to(tl.int64)
        i = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        ok = i < cols
        g = tl.load(gate_ptr + row * gate_row_stride + i * gate_col_stride, mask=ok, other=0.0)
        u = tl.load(up_ptr + row * up_row_stride + i * up_col_stride, mask=ok, other=0.0)
        g32 = g.to(tl.float32)
        silu = (g32 / (1.0 + tl.exp(-g32))).to(g.dtype)
        tl.store(out_ptr + row * cols + i, (silu.to(tl.float32) * u.to(tl.float32)).to(g.dtype), mask=ok)


def _norm(x, delta, weight, eps: float):
    x = x.contiguous()
    h, out = (torch.empty_like(x) if delta is not None else x), torch.empty_like(x)
    dim = x.shape[-1]
    _rms_norm_kernel[(x.numel() // dim,)](
        x, delta.contiguous() if delta is not None else x, weight, h, out, eps, DIM=dim,
        BLOCK=triton.next_power_of_2(dim), ADD=delta is not None, PDL=launch.enabled, launch_pdl=launch.enabled,
        num_warps=4,
    )
    return h, out


def add_rms_norm(x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float):
    """(x + delta, RMS norm of it times weight), both shaped like x."""
    return _norm(x, delta, weight, eps)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return _norm(x, None, weight, eps)[1]


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for [..., cols] tensors whose leading dimensions flatten into rows (views with a
    column stride, such as the interleaved gate/up halves of quantize.Int4Linear's output, are fine)."""
    shape, cols = gate.shape, gate.shape[-1]
    gate, up = gate.view(-1, cols), up.view(-1, cols)
    out = torch.empty(gate.shape, dtype=gate.dtype, device=gate.device)
    block = min(1024, triton.next_power_of_2(cols))
    _silu_mul_kernel[(gate.shape[0], triton.cdiv(cols, block))](
        gate, up, out, cols, gate.stride(0), up.stride(0), gate.stride(1), up.stride(1), BLOCK=block,
        PDL=launch.enabled, launch_pdl=launch.enabled, num_warps=4,
    )
    return out.view(shape)


class KernelMLP(MLP):
    def forward(self, x):
        return self.down_proj(silu_mul(self.gate_proj(x), self.up_proj(x)))
