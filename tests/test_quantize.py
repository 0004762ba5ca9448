import pytest
import torch

from selfspec import accel
from selfspec.quantize import (
    Int4Linear, Int8Linear, dequantize_int4, pack_half2_words, pack_nibbles, quantize_int4, unpack_nibbles,
)


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_quantization_error_is_bounded(group_size):
    w = torch.randn(256, 1024, generator=torch.Generator().manual_seed(0))
    q, scales = quantize_int4(w, group_size)
    assert q.dtype == torch.int8 and int(q.min()) >= -8 and int(q.max()) <= 7
    assert scales.shape == (256, 1024 // group_size)
    relative = (dequantize_int4(q, scales) - w).norm() / w.norm()
    # Round-to-nearest INT4 of Gaussian weights: ~0.10-0.12 with absmax scales; the clip search must do better.
    assert relative < 0.105
    q_plain, s_plain = quantize_int4(w, group_size, clip_ratios=(1.0,))
    assert relative < (dequantize_int4(q_plain, s_plain) - w).norm() / w.norm()


def test_slicing_changes_no_result():
    w = torch.randn(300, 256, generator=torch.Generator().manual_seed(1)).bfloat16()
    q, scales = quantize_int4(w, 64)  # one slice on CPU (rows_per_slice)
    q7, scales7 = quantize_int4(w, 64, rows_per_chunk=7)
    assert torch.equal(q, q7) and torch.equal(scales, scales7)
    whole, sliced = Int8Linear(w), Int8Linear(w, rows_per_chunk=7)
    assert torch.equal(whole.q, sliced.q) and torch.equal(whole.scales, sliced.scales)


def test_outlier_only_affects_its_own_group():
    w = torch.randn(16, 256, generator=torch.Generator().manual_seed(1))
    w[3, 5] = 100.0
    q, scales = quantize_int4(w, 64)
    err = (dequantize_int4(q, scales) - w).abs()
    assert err[3, 64:].max() < 0.5 and err[:3].max() < 0.5


def test_nibble_packing_round_trips():
    q = torch.randint(-8, 8, (32, 64), dtype=torch.int8)
    packed = pack_nibbles(q, 32)
    assert packed.shape == (32, 32) and packed.dtype == torch.uint8
    assert torch.equal(unpack_nibbles(packed, 32), q)


def test_half2_words_hold_each_column_where_the_kernel_reads_it():
    # The f16x2 kernel pulls half2 pairs out of bits (0-3, 16-19), (4-7, 20-23), (8-11, 24-27), (12-15, 28-31)
    # and multiplies them by the activation pairs (8w, 8w+1), (8w+2, 8w+3), ...
    q = torch.randint(-8, 8, (5, 64), dtype=torch.int8)
    words = pack_half2_words(q)
    assert words.shape == (5, 8) and words.dtype == torch.int32
    for col in range(64):
        word, within = divmod(col, 8)
        bit = 4 * (within // 2) + 16 * (within % 2)
        assert torch.equal((words[:, word] >> bit) & 0xF, q[:, col].to(torch.int32) + 8)


@pytest.mark.parametrize("shape,group_size,kernel", [((64, 256), 64, "cpu_int4pack"), ((40, 80), 64, "dequantize")])
def test_int4_linear_matches_dequantized_matmul(shape, group_size, kernel):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(2))
    layer = Int4Linear(w, group_size)
    accel.use_kernels(layer)
    assert layer.kernel == kernel
    x = torch.randn(3, 5, shape[1], generator=torch.Generator().manual_seed(3))
    q, scales = quantize_int4(w, layer.group_size)
    expected = x @ dequantize_int4(q, scales).T
    actual = layer(x)
    assert actual.shape == (3, 5, shape[0]) and actual.dtype == x.dtype
    # The CPU kernel runs in bfloat16: about 3 significant digits.
    assert (actual - expected).norm() / expected.norm() < 1e-2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kernel", ["cpu_int8pack", "dequantize"])
def test_int8_linear_matches_the_16bit_matmul_closely(kernel, dtype):
    w = torch.nn.functional.normalize(torch.randn(300, 128, generator=torch.Generator().manual_seed(5)), dim=1)
    w[7, 3] = 2.0  # one large weight only coarsens its own row's scale
    layer = Int8Linear(w.to(dtype))
    assert layer.q.dtype == torch.int8 and layer.scales.shape == (300,)
    assert int(layer.q.abs().max()) == 127 and float((layer.q.float() * layer.scales.float()[:, None] - w).abs().max()) < 0.01
    chunked = Int8Linear(w.to(dtype), rows_per_chunk=7)  # quantized in slices of rows: the same result
    assert torch.equal(chunked.q, layer.q) and torch.equal(chunked.scales, layer.scales)
    if kernel != "dequantize":
        accel.use_kernels(layer)
    assert layer.kernel == kernel
    x = torch.randn(2, 4, 128, generator=torch.Generator().manual_seed(6)).to(dtype)
    expected = x.float() @ w.T
    actual = layer(x)
    assert actual.shape == (2, 4, 300) and actual.dtype == dtype
    error = (actual.float() - expected).norm() / expected.norm()
    # INT8 rounding alone gives ~5e-3 here (half a step of absmax/127 on unit rows); bfloat16 adds ~4e-3.
    assert error < (0.01 if dtype == torch.float32 else 0.02)
    assert error > 1e-4  # the weights really are rounded
