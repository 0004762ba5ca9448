"""The 16-bit GEMV of the target's layers at decode sizes (accel/gemv.py)."""
import pytest
import torch

from selfspec import accel
from selfspec.accel import gemv
from selfspec.accel.gemv import matmul
from selfspec.model import Linear
from helpers import kernel_tests


def check_kernels(device: str):
    # float16 on the GPU, the kernel's dtypes there (tl.dot would round float32 to TF32); float32 in the
    # interpreter, where the sums are exact enough to check the indexing tightly.
    dtype, tolerance = (torch.float16, 1e-3) if device == "cuda" else (torch.float32, 1e-5)
    torch.manual_seed(0)
    for n, k, m, blocks in [(24, 192, 1, (16, 64)), (37, 320, 1, (32, 128)), (5, 1000, 1, (16, 256)),
                            (40, 192, 9, (32, 64)), (37, 320, 16, (16, 128)), (5, 1000, 2, (16, 256))]:
        w = torch.randn(n, k, device=device, dtype=dtype)
        x = torch.randn(1, m, k, device=device, dtype=dtype)
        y = matmul(x, w, None if device == "cuda" else blocks)
        ref = x.float() @ w.float().T
        assert y.shape == (1, m, n) and y.dtype == dtype, (y.shape, y.dtype)
        err = float((y.float() - ref).norm() / ref.norm())
        assert err < tolerance, (n, k, m, err)


test_compiled_kernels, test_kernel_logic_in_the_interpreter = kernel_tests(__name__, check_kernels)


@pytest.mark.gpu_slow
@pytest.mark.parametrize("m", [1, 2, 9, 16])
@pytest.mark.parametrize("n,k", [(12288, 4096), (4096, 11008), (13696, 5120), (5120, 13696), (1000, 320), (7, 100)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@torch.no_grad()
def test_triton_linear_serves_decode_sizes_and_matches_float32(n, k, m, dtype):
    layer = Linear(k, n).to("cuda", dtype)
    x = torch.randn(1, m, k, device="cuda", dtype=dtype)
    assert not gemv.serves(layer.weight.float())  # float32 stays with cuBLAS
    accel.use_kernels(layer)
    assert isinstance(layer, gemv.GemvLinear)
    prefill = torch.randn(1, 17, k, device="cuda", dtype=dtype)  # past MAX_VERIFY_TOKENS: cuBLAS
    assert torch.equal(layer(prefill), torch.nn.functional.linear(prefill, layer.weight))
    y = layer(x)
    ref = torch.nn.functional.linear(x.float(), layer.weight.float())
    assert y.dtype == dtype and y.shape == (1, m, n)
    for i in range(m):  # each row as a one-token call computes: bit for bit
        assert torch.equal(layer(x[:, i : i + 1]), y[:, i : i + 1]), i
    # float32 sums; the output rounding to 16 bits is the error left
    assert float((y.float() - ref).norm() / ref.norm()) < (1e-3 if dtype == torch.float16 else 6e-3)
