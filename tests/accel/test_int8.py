"""The INT8 GEMV of the draft's lm_head (accel/int8.py)."""
import pytest
import torch

from selfspec import accel
from selfspec.accel.int8 import int8_matmul
from selfspec.quantize import Int8Linear
from helpers import kernel_tests


def check_kernels(device: str):
    torch.manual_seed(0)
    for n, k, m, blocks in [(24, 192, 1, (8, 64)), (37, 320, 3, (4, 128)), (16, 1000, 2, (16, 256))]:
        q = torch.randint(-127, 128, (n, k), dtype=torch.int8, device=device)
        s = torch.rand(n, device=device) / 127
        x = torch.randn(m, k, device=device)
        y = int8_matmul(x, q, s, None if device == "cuda" else blocks)
        ref = x @ (q.float() * s[:, None]).T
        err = float((y - ref).norm() / ref.norm())
        assert err < 1e-5, (n, k, m, err)


test_compiled_kernels, test_kernel_logic_in_the_interpreter = kernel_tests(__name__, check_kernels)


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 9])
@pytest.mark.parametrize("n,k", [(125696, 4096), (125696, 5120), (1000, 320)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_triton_int8_matches_dequantized_matmul(n, k, m, dtype):
    layer = Int8Linear(torch.nn.functional.normalize(torch.randn(n, k, device="cuda"), dim=1).to(dtype))
    accel.use_kernels(layer)
    assert layer.kernel == "triton"
    x = torch.randn(m, k, device="cuda", dtype=dtype)
    ref = x.float() @ (layer.q.float() * layer.scales.float()[:, None]).T
    y = layer(x)
    assert y.dtype == dtype and y.shape == (m, n)
    assert float((y.float() - ref).norm() / ref.norm()) < (1e-3 if dtype == torch.float16 else 8e-3)
