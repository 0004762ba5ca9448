"""The draft's MLP block as one persistent CUDA kernel (accel/mlp_cuda.py): its plan per device, its build
without a GPU; on a GPU, its result against the two GEMV launches it replaces at both Baichuan2 shapes,
replayed in a CUDA graph with programmatic dependent launch, and beside another kernel that holds SMs."""
import ctypes

import pytest
import torch

from selfspec.accel import int4_cuda, mlp_cuda
from selfspec.quantize import pack_half2_words, quantize_int4

needs_nvrtc = pytest.mark.skipif(int4_cuda.nvrtc_version() is None, reason="needs cuda-python's NVRTC")
cuda = pytest.mark.skipif(not (torch.cuda.is_available() and int4_cuda.available(torch.device("cuda"))),
                          reason="needs a CUDA GPU (compute capability 8.0+) and cuda-python")
H100 = (132, 227 * 1024)  # SMs, shared memory a block may opt into
SHAPES = [(4096, 11008, 64), (5120, 13696, 64)]  # Baichuan2-7B, 13B: hidden, intermediate, draft group size
# Relative norm of the difference from the two GEMVs: the same arithmetic per row and lane, so only the
# compiler's contraction of multiply-adds may differ.
TOLERANCE = 1e-3


def test_plan_keeps_all_of_7b_down_in_shared_memory_and_most_of_13b():
    p7 = mlp_cuda.plan_for(*H100, 4096, 11008, 64)
    assert (p7.blocks, p7.warps, p7.down_rows, p7.shared_rows) == (132, 16, 32, 32)  # 132 * 32 rows >= 4,096
    assert p7.shared_bytes == 32 * (11008 // 2 + 11008 // 64 * 2)
    p13 = mlp_cuda.plan_for(*H100, 5120, 13696, 64)
    assert (p13.down_rows, p13.shared_rows) == (39, 26)  # 39 rows of 7.1 KB do not fit into 227 KB
    static, _ = mlp_cuda._sizes(5120, 13696, 64)
    assert static + p13.shared_bytes <= H100[1]


def test_plan_refuses_what_the_kernel_cannot_do():
    assert mlp_cuda.plan_for(*H100, 5120, 13696, 128) is None  # 107 scales a row: copied in pairs
    assert mlp_cuda.plan_for(*H100, 4096, 11008, 48) is None  # groups of 32 columns at least
    assert mlp_cuda.plan_for(132, 100 * 1024, 4096, 11008, 64) is None  # under half of each block's rows fit
    assert mlp_cuda.plan_for(*H100, 8192, 28672, 64) is None  # the activations alone exceed static shared memory


@needs_nvrtc
@pytest.mark.parametrize("hidden,inter,group,down_rows,shared_rows", [
    (4096, 11008, 64, 32, 32), (5120, 13696, 64, 39, 26), (64, 256, 32, 1, 1)])
def test_nvrtc_builds_the_kernel(hidden, inter, group, down_rows, shared_rows):
    assert len(mlp_cuda.compile_cubin(90, hidden, inter, group, down_rows, shared_rows)) > 1000


def _weights(n, k, group):
    q, s = quantize_int4(torch.randn(n, k, device="cuda", dtype=torch.float16) * k ** -0.5, group)
    return pack_half2_words(q), s.half()


def _layer(hidden, inter, group):
    h = torch.randn(1, 1, hidden, device="cuda", dtype=torch.float16)
    norm_weight = (1 + 0.1 * torch.randn(hidden, device="cuda")).half()
    return h, norm_weight, *_weights(2 * inter, hidden, group), *_weights(hidden, inter, group)


def _two_gemvs(h, norm_weight, gu_words, gu_scales, down_words, down_scales, group, pdl=False):
    act = int4_cuda.int4_gemv(h, gu_words, gu_scales, group, glu=True, norm_weight=norm_weight, norm_eps=1e-6, pdl=pdl)
    return int4_cuda.int4_gemv(act, down_words, down_scales, group, residual=h, pdl=pdl)


def _relative(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


SPIN = r"""
extern "C" __global__ void spin(long long cycles) {
    extern __shared__ char taken[];
    const long long start = clock64();
    while (clock64() - start < cycles) {}
    if (threadIdx.x == 0) taken[0] = 1;
}
"""


def _hold_sms(stream, sms: int, cycles: int = 20_000_000):
    """A kernel on `stream` whose blocks each take most of an SM's shared memory for `cycles` clock cycles."""
    device = torch.device("cuda", torch.cuda.current_device())
    function = int4_cuda.load_kernel(device, ("spin",), b"spin", lambda arch: int4_cuda.nvrtc_cubin(SPIN, arch, {}, "spin"))
    shared = 160 * 1024
    attribute = int4_cuda.driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
    int4_cuda._check(int4_cuda.driver.cuFuncSetAttribute(function, attribute, shared))
    int4_cuda.launch(function, (sms, 1, 1), (32, 1, 1), stream.cuda_stream, False, (cycles,), (ctypes.c_longlong,),
                     shared)


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("hidden,inter,group", SHAPES)
def test_matches_the_two_gemvs(hidden, inter, group):
    device = torch.device("cuda")
    assert mlp_cuda.serves(device, hidden, inter, group)
    h, norm_weight, *weights = _layer(hidden, inter, group)
    y = mlp_cuda.draft_mlp(h, norm_weight, 1e-6, *weights, group)
    ref = _two_gemvs(h, norm_weight, *weights, group)
    assert y.shape == h.shape and torch.isfinite(y).all() and _relative(y, ref) < TOLERANCE


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("hidden,inter,group", SHAPES)
def test_chained_in_a_graph_with_pdl_beside_a_kernel_that_holds_sms(hidden, inter, group):
    # Three MLP blocks back to back, PDL on where the GPU has it, captured once and replayed: the barrier's
    # counter and generation carry over from call to call and replay to replay. A kernel on another stream
    # holds the shared memory of 8 SMs meanwhile: the blocks that cannot start there until it ends arrive at
    # the barrier late, and the others wait for them.
    layers = [_layer(hidden, inter, group)[1:] for _ in range(3)]
    h = torch.randn(1, 1, hidden, device="cuda", dtype=torch.float16)

    def chain(x, fn):
        for norm_weight, *weights in layers:
            x = fn(x, norm_weight, *weights)
            x = x / x.float().norm().half() * 40  # keep the values in range from block to block
        return x

    one_kernel = lambda x, n, *w: mlp_cuda.draft_mlp(x, n, 1e-6, *w, group, pdl=True)  # noqa: E731
    ref = chain(h, lambda x, n, *w: _two_gemvs(x, n, *w, group))
    eager = chain(h, one_kernel)
    assert _relative(eager, ref) < 3 * TOLERANCE
    static_h = h.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        chain(static_h, one_kernel)  # warm-up outside capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y = chain(static_h, one_kernel)
    side = torch.cuda.Stream()
    for _ in range(3):
        _hold_sms(side, 8)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(static_y, eager)
    static_h.copy_(torch.randn_like(h))
    graph.replay()
    assert torch.equal(static_y, chain(static_h, one_kernel))
