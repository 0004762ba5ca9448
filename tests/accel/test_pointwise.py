"""The Triton pointwise kernels (accel/pointwise.py) against the eager functions of model.py, which the
CPU runs: residual add + RMS norm, RMS norm, SiLU-multiply.

Compiled on CUDA; without CUDA their logic runs under Triton's CPU interpreter (helpers.kernel_tests)."""
import torch

from helpers import kernel_tests


def check_kernels(device: str):
    from selfspec import model
    from selfspec.accel import pointwise

    torch.manual_seed(0)
    cases = [(torch.float32, 1e-5), (torch.float16, 1e-3)]
    if device == "cuda":  # Triton's CPU interpreter rounds bfloat16 arithmetic its own way
        cases.append((torch.bfloat16, 8e-3))
    for dtype, tol in cases:
        for rows, dim in [(1, 4096), (9, 5120), (16, 96), (3, 100), (300, 64)]:  # 100: shorter than its block
            x = (torch.randn(1, rows, dim, device=device) * 30).to(dtype)
            delta = torch.randn(1, rows, dim, device=device).to(dtype)
            weight = (torch.rand(dim, device=device) + 0.5).to(dtype)
            h, out = pointwise.add_rms_norm(x, delta, weight, 1e-6)
            h_ref = x.cpu() + delta.cpu()
            out_ref = model.rms_norm(h_ref, weight.cpu(), 1e-6)
            assert h.shape == out.shape == x.shape and out.dtype == dtype
            assert torch.equal(h.cpu(), h_ref), (dtype, rows, dim)  # one rounded add either way
            # The sum of squares runs in another order: float32 agrees to rounding, 16 bits to an ulp or two.
            torch.testing.assert_close(out.cpu(), out_ref, atol=tol, rtol=tol)
            torch.testing.assert_close(pointwise.rms_norm(x, weight, 1e-6).cpu(),
                                       model.rms_norm(x.cpu(), weight.cpu(), 1e-6), atol=tol, rtol=tol)
        for rows, cols in [(1, 11008), (9, 1000), (300, 64)]:
            y = (torch.randn(1, rows, 2 * cols, device=device) * 4).to(dtype)
            # Separate gate and up tensors (the FP16 MLP), and interleaved halves of one (the INT4 draft's).
            for gate, up in ((y[..., :cols].contiguous(), y[..., cols:].contiguous()), (y[..., 0::2], y[..., 1::2])):
                out = pointwise.silu_mul(gate, up)
                assert out.shape == gate.shape and out.dtype == dtype
                torch.testing.assert_close(out.cpu(), model.silu_mul(gate.cpu(), up.cpu()), atol=tol, rtol=tol)


test_compiled_kernels, test_kernel_logic_in_the_interpreter = kernel_tests(__name__, check_kernels)
