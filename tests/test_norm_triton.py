"""The Triton residual add + RMS norm (norm_triton.py) against the eager model.add_rms_norm.

Compiled on CUDA; without CUDA its logic runs under Triton's CPU interpreter (a subprocess: the
interpreter is chosen when Triton is imported)."""
import pytest
import torch

from utils import run_in_triton_interpreter


def check_kernel(device: str):
    from selfspec.model import add_rms_norm
    from selfspec.norm_triton import add_rms_norm as kernel_add_rms_norm

    torch.manual_seed(0)
    cases = [(torch.float32, 1e-5), (torch.float16, 1e-3)]
    if device == "cuda":  # Triton's CPU interpreter rounds bfloat16 arithmetic its own way
        cases.append((torch.bfloat16, 8e-3))
    for dtype, tol in cases:
        for rows, dim in [(1, 4096), (9, 5120), (16, 96), (3, 100)]:  # 100: a row shorter than its block
            x = (torch.randn(1, rows, dim, device=device) * 30).to(dtype)
            delta = torch.randn(1, rows, dim, device=device).to(dtype)
            weight = (torch.rand(dim, device=device) + 0.5).to(dtype)
            h, out = kernel_add_rms_norm(x, delta, weight, 1e-6)
            h_ref, out_ref = add_rms_norm(x, delta, weight, 1e-6)
            assert h.shape == out.shape == x.shape and out.dtype == dtype
            assert torch.equal(h, h_ref), (dtype, rows, dim)  # one rounded add either way
            # The sum of squares runs in another order: float32 agrees to rounding, 16 bits to an ulp or two.
            torch.testing.assert_close(out, out_ref, atol=tol, rtol=tol)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compiled_kernel_matches_eager():
    check_kernel("cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the compiled kernel is tested instead")
def test_kernel_logic_in_the_interpreter():
    pytest.importorskip("triton")
    code = "import sys; sys.path.insert(0, 'tests'); from test_norm_triton import check_kernel; check_kernel('cpu'); print('ok')"
    run_in_triton_interpreter(code)
