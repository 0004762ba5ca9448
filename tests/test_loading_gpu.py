"""Loading onto the GPU: the pinned-memory copier and the weights it gives."""
import pytest
import torch

from selfspec.weights import device_copier, load_model


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_device_copier_matches_tensor_to(dtype):
    to_gpu = device_copier("cuda", torch.float16, slice_bytes=1000)  # most tensors pass in several slices
    torch.manual_seed(0)
    tensors = [torch.randn(n, dtype=dtype) for n in (0, 1, 250, 499, 500, 501, 4321)]
    tensors += [torch.randn(37, 64, dtype=dtype).T, torch.randn(8, 8, device="cuda", dtype=dtype)]
    copies = [to_gpu(t) for t in tensors]  # queued one after the other, both buffers in use
    for tensor, copy in zip(tensors, copies):
        assert copy.device.type == "cuda" and copy.dtype == torch.float16 and copy.shape == tensor.shape
        assert torch.equal(copy, tensor.to(device="cuda", dtype=torch.float16))


@pytest.mark.gpu
@pytest.mark.parametrize("fixture", ["tiny_7b", "tiny_13b_sharded"])
def test_loading_onto_the_gpu_gives_the_weights_loaded_on_cpu(request, fixture):
    folder = request.getfixturevalue(fixture)
    on_cpu = load_model(folder, torch.float16, "cpu").state_dict()
    on_gpu = load_model(folder, torch.float16, "cuda").state_dict()
    assert on_gpu.keys() == on_cpu.keys()
    for key, tensor in on_gpu.items():
        assert tensor.is_cuda and tensor.dtype == on_cpu[key].dtype, key
        if key == "lm_head.weight":  # normalized after loading, on each device with its own rounding
            torch.testing.assert_close(tensor.cpu(), on_cpu[key], atol=1e-3, rtol=0)
        else:
            assert torch.equal(tensor.cpu(), on_cpu[key]), key

INTERPRETER_CHECK = """
import torch
from selfspec.accel.int4 import int4_matmul
from selfspec.quantize import dequantize_int4, pack_nibbles, quantize_int4
torch.manual_seed(0)
for n, k, m, g, blocks in [(24, 192, 1, 64, (8, 2)), (40, 320, 3, 32, (16, 4)), (16, 1056, 1, 32, (4, 8))]:
    w = torch.randn(n, k)
    q, s = quantize_int4(w, g)
    x = torch.randn(m, k)
    y = int4_matmul(x, pack_nibbles(q, g), s, g, blocks)
    ref = x @ dequantize_int4(q, s).T
    err = float((y - ref).norm() / ref.norm())
    assert err < 1e-5, (n, k, m, g, err)
from selfspec.accel.int8 import int8_matmul
for n, k, m, blocks in [(24, 192, 1, (8, 64)), (37, 320, 3, (4, 128)), (16, 1000, 2, (16, 256))]:
    q = torch.randint(-127, 128, (n, k), dtype=torch.int8)
    s = torch.rand(n) / 127
    x = torch.randn(m, k)
    y = int8_matmul(x, q, s, blocks)
    ref = x @ (q.float() * s[:, None]).T
    err = float((y - ref).norm() / ref.norm())
    assert err < 1e-5, (n, k, m, err)
from selfspec.accel.gemv import matmul
for n, k, m, blocks in [(24, 192, 1, (16, 64)), (37, 320, 1, (32, 128)), (5, 1000, 1, (16, 256)),
                        (40, 192, 9, (32, 64)), (37, 320, 16, (16, 128)), (5, 1000, 2, (16, 256))]:
    w = torch.randn(n, k)
    x = torch.randn(1, m, k)
    y = matmul(x, w, blocks)
    ref = x @ w.T
    assert y.shape == (1, m, n), y.shape
    err = float((y - ref).norm() / ref.norm())
    assert err < 1e-5, (n, k, m, err)
from selfspec.accel.int4 import quantize_groups
from selfspec.quantize import CLIP_RATIOS
for n, k, g in [(24, 192, 64), (40, 320, 32), (3, 128, 128)]:
    w = torch.randn(n, k)
    w[0, 5] = 30.0  # an outlier: a clipped scale wins for its group
    q, s = quantize_groups(w, g, CLIP_RATIOS)
    q_ref, s_ref = quantize_int4(w, g)  # on CPU: torch's version
    assert torch.equal(q, q_ref) and torch.equal(s, s_ref), (n, k, g)
    ratios_chosen = (s / (w.view(n, -1, g).abs().amax(-1) / 7)).round(decimals=4).unique()
    assert len(ratios_chosen) >= 2, ratios_chosen  # the search did choose between ratios
print("ok")
"""
