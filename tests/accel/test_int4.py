"""The draft's INT4 kernels (accel/int4.py): the portable and the half2 GEMV, the quantization kernel, and
the kernel choice for INT4 layers."""
import pytest
import torch

from selfspec import accel
from selfspec.accel import int4
from selfspec.accel.int4 import int4_matmul, quantize_groups
from selfspec.draft import Int4MLP, draft_bytes, make_draft
from selfspec.quantize import (
    CLIP_RATIOS, Int4Linear, dequantize_int4, pack_half2_words, pack_nibbles, quantize_int4, weight_bytes,
)
from helpers import kernel_tests, random_model


def check_kernels(device: str):
    """The portable INT4 GEMV and the draft's quantization kernel against torch."""
    torch.manual_seed(0)
    for n, k, m, g, blocks in [(24, 192, 1, 64, (8, 2)), (40, 320, 3, 32, (16, 4)), (16, 1056, 1, 32, (4, 8))]:
        w = torch.randn(n, k, device=device)
        q, s = quantize_int4(w.cpu(), g)
        x = torch.randn(m, k, device=device)
        y = int4_matmul(x, pack_nibbles(q, g).to(device), s.to(device), g, None if device == "cuda" else blocks)
        ref = x.cpu() @ dequantize_int4(q, s).T
        err = float((y.cpu() - ref).norm() / ref.norm())
        assert err < 1e-5, (n, k, m, g, err)
    if device == "cuda":  # where float32 sums differ in order a ratio may differ: see the test below
        return
    for n, k, g in [(24, 192, 64), (40, 320, 32), (3, 128, 128)]:
        w = torch.randn(n, k)
        w[0, 5] = 30.0  # an outlier: a clipped scale wins for its group
        q, s = quantize_groups(w.to(device), g, CLIP_RATIOS)
        q_ref, s_ref = quantize_int4(w, g)  # on CPU: torch's version
        assert torch.equal(q.cpu(), q_ref) and torch.equal(s.cpu(), s_ref), (n, k, g)
        ratios_chosen = (s.cpu() / (w.view(n, -1, g).abs().amax(-1) / 7)).round(decimals=4).unique()
        assert len(ratios_chosen) >= 2, ratios_chosen  # the search did choose between ratios


test_compiled_kernels, test_kernel_logic_in_the_interpreter = kernel_tests(__name__, check_kernels)


@pytest.mark.gpu
@pytest.mark.parametrize("shape,group_size", [((1024, 4096), 64), ((512, 11008), 64), ((300, 512), 32), ((64, 256), 128)])
def test_draft_quantization_on_the_gpu_matches_torch_on_cpu(shape, group_size):
    torch.manual_seed(0)
    w = (torch.randn(shape) * shape[1] ** -0.5).half()
    w[::97, ::89] *= 20  # outliers, so that clipping matters
    q, s = int4.quantize_groups(w.cuda(), group_size, CLIP_RATIOS)  # the Triton kernel
    q_ref, s_ref = quantize_int4(w, group_size)  # torch's version
    # Only the squared errors' summation order differs: a group may choose another ratio where two give
    # the same error to float32 rounding, nowhere else.
    differ = (s.cpu() != s_ref)
    assert differ.float().mean() < 1e-3
    groups = w.float().view(shape[0], -1, group_size)

    def error(q, s):
        return ((groups - q.cpu().view_as(groups).float() * s.cpu()[..., None]) ** 2).sum(-1)

    torch.testing.assert_close(error(q, s)[differ], error(q_ref, s_ref)[differ], rtol=1e-5, atol=0)
    assert torch.equal(q.cpu().view_as(groups)[~differ], q_ref.view_as(groups)[~differ])


@pytest.mark.gpu_slow
@pytest.mark.parametrize("m", [1, 2, 9])
@pytest.mark.parametrize("n,k", [(4096, 4096), (11008, 4096), (4096, 11008), (1000, 320)])
@pytest.mark.parametrize("dtype,kernel", [(torch.float16, "triton_half2"), (torch.bfloat16, "triton")])
def test_triton_int4_matches_dequantized_matmul(n, k, m, dtype, kernel):
    w = torch.randn(n, k, device="cuda", dtype=dtype)
    layer = Int4Linear(w, 64)
    accel.use_kernels(layer)
    assert layer.kernel == kernel
    x = torch.randn(m, k, device="cuda", dtype=dtype)
    q, s = quantize_int4(w, layer.group_size)
    ref = x.float() @ dequantize_int4(q, s.to(dtype).float()).T
    y = layer(x)
    assert y.dtype == dtype and y.shape == (m, n)
    # f16x2 sums of four products in float16, then float32; bfloat16 output rounding is coarser
    assert float((y.float() - ref).norm() / ref.norm()) < (2e-3 if dtype == torch.float16 else 8e-3)


@pytest.mark.gpu_slow
@pytest.mark.parametrize("config", range(len(getattr(int4, "HALF2_CONFIGS", []))))
@pytest.mark.parametrize("n,k,glu", [(4096, 4096, False), (4096, 11008, False), (22016, 4096, True), (1000, 320, False),
                                     (200, 320, True)])
def test_every_half2_configuration_matches_dequantized_matmul(config, n, k, glu):
    # The autotuner picks one configuration per shape, so each way of summing (per iteration, per word), with
    # and without masks (whole tiles or not), is checked here directly.
    w = torch.randn(n, k, device="cuda", dtype=torch.float16)
    q, s = quantize_int4(w, 64)
    x = torch.randn(3, k, device="cuda", dtype=torch.float16)
    ref = x.float() @ dequantize_int4(q, s.half().float()).T
    if glu:
        ref = torch.nn.functional.silu(ref[:, 0::2]) * ref[:, 1::2]
    y = int4.int4_matmul_half2(x, pack_half2_words(q), s.half(), 64, glu=glu, config=int4.HALF2_CONFIGS[config])
    assert y.shape == ref.shape and float((y.float() - ref).norm() / ref.norm()) < 2e-3


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_draft_mlp_applies_silu_in_the_gate_up_kernel(dtype):
    model = random_model("rope", num_heads=8, head_dim=32, intermediate_size=688, dtype=dtype).cuda()
    mlp = model.model.layers[0].mlp
    fused = Int4MLP(mlp, 64)
    accel.use_kernels(fused)
    assert fused.gate_up_proj.kernel == ("triton_half2" if dtype == torch.float16 else "triton")
    gate, up, down = (Int4Linear(lin.weight, 64) for lin in (mlp.gate_proj, mlp.up_proj, mlp.down_proj))
    for layer in (gate, up, down):
        accel.use_kernels(layer)
    for m in (1, 3):
        x = torch.randn(1, m, 256, device="cuda", dtype=dtype)
        hidden = torch.nn.functional.silu(gate(x).float()) * up(x).float()
        got = fused.gate_up_proj(x)
        assert got.shape == (1, m, 688) and got.dtype == dtype
        assert float((got.float() - hidden).norm() / hidden.norm()) < 1e-2
        expected = down(hidden.to(dtype)).float()
        assert float((fused(x).float() - expected).norm() / expected.norm()) < 1e-2


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_draft_bytes_on_the_gpu(dtype):
    model = random_model("rope", num_heads=8, head_dim=16, intermediate_size=256, dtype=dtype).cuda()
    draft = make_draft(model, group_size=64)
    accel.use_kernels(model, draft)
    assert {m.kernel for m in draft.modules() if isinstance(m, Int4Linear)} == {
        "triton_half2" if dtype == torch.float16 else "triton"}
    assert draft_bytes(model.args, dtype, 64) == weight_bytes(draft, quantized_only=True)


@pytest.mark.gpu
@pytest.mark.parametrize("scale", [1e-3, 300.0])
def test_half2_kernel_keeps_small_and_large_activations(scale):
    # The f16x2 products are (n - 8) / 16 * x: no overflow inside for |x| in the hundreds (outputs near 10^4),
    # no flush of small x.
    w = torch.randn(512, 1024, device="cuda", dtype=torch.float16)
    layer = Int4Linear(w, 64)
    accel.use_kernels(layer)
    x = torch.randn(3, 1024, device="cuda", dtype=torch.float16) * scale
    q, s = quantize_int4(w, 64)
    ref = x.float() @ dequantize_int4(q, s.half().float()).T
    y = layer(x).float()
    assert torch.isfinite(y).all() and float((y - ref).norm() / ref.norm()) < 2e-3
