"""The CUDA C++ INT4 GEMV (selfspec/accel/int4_cuda.py): NVRTC builds it without a GPU where cuda-python and NVRTC are
installed; on a GPU it matches a float32 reference, alone, in CUDA graphs and with programmatic dependent launch, and
its norm prologue matches pointwise.rms_norm followed by the GEMV."""
import dataclasses
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from selfspec.accel import int4_cuda, pointwise
from selfspec.accel.int4_cuda import Tiling
from selfspec.quantize import dequantize_int4, pack_half2_words, quantize_int4

needs_nvrtc = pytest.mark.skipif(int4_cuda.nvrtc_version() is None, reason="needs cuda-python and NVRTC")
cuda = pytest.mark.skipif(not (torch.cuda.is_available() and int4_cuda.available(torch.device("cuda"))),
                          reason="needs a CUDA GPU (compute capability 8.0+) and cuda-python")
TOLERANCE = 2e-3  # relative norm: f16x2 sums of four products per word, float32 beyond, fp16 output
GLU_TOLERANCE = 2 * TOLERANCE  # silu(gate) * up carries the errors of both products
# The norm prologue against pointwise.rms_norm then the GEMV: the same arithmetic but for the order of the sum
# of squares, which can move an element of the normed input by one fp16 rounding step.
NORM_TOLERANCE = 1e-3


def test_the_shared_ptx_block_becomes_a_cuda_asm_string():
    text = int4_cuda._asm_string("{\nadd.f32 $0, $1, $2;\n}")
    assert text == '        "{\\n"\n        "add.f32 %0, %1, %2;\\n"\n        "}\\n"'
    assert "$" not in int4_cuda._SOURCE and "lop3.b32 h0, %1, 0x000F000F" in int4_cuda._SOURCE


@needs_nvrtc
@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("group,k,glu,residual,tiling", [
    (128, 4096, False, False, Tiling()), (64, 11008, False, True, Tiling(rows=4, unroll=2, warps=8)),
    (32, 96, True, False, Tiling(rows=2, unroll=1, warps=1)), (128, 13696, True, False, Tiling(rows=4, unroll=4)),
    (64, 320, False, False, Tiling(rows=1, unroll=8, warps=2)), (128, 4096, False, True, Tiling(l2_prefetch=True)),
    (64, 4096, False, True, Tiling(launch_next_early=False)), (64, 11008, False, True, Tiling(blocks_per_sm=4)),
    (64, 4096, True, False, Tiling(blocks_per_sm=4, timeline=True)),
])
def test_nvrtc_builds_a_cubin_for_each_variant(arch, group, k, glu, residual, tiling):
    cubin = int4_cuda.compile_cubin(arch, group, k, glu, residual, tiling)
    assert cubin[:4] == b"\x7fELF" and len(cubin) > 1000


@needs_nvrtc
@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("group,k,glu,residual,tiling", [
    (128, 4096, False, False, Tiling()), (64, 5120, True, False, Tiling(rows=4, unroll=4, warps=4)),
    (32, 96, True, False, Tiling(rows=2, unroll=1, warps=1)), (64, 320, False, True, Tiling(rows=1, unroll=8, warps=2)),
])
def test_nvrtc_builds_the_norm_prologue_variants(arch, group, k, glu, residual, tiling):
    cubin = int4_cuda.compile_cubin(arch, group, k, glu, residual, tiling, norm=True)
    assert cubin[:4] == b"\x7fELF" and cubin != int4_cuda.compile_cubin(arch, group, k, glu, residual, tiling)


@needs_nvrtc
def test_build_refuses_shapes_the_kernel_cannot_walk():
    with pytest.raises(ValueError, match="multiple"):
        int4_cuda.compile_cubin(90, 64, 96, False, False, Tiling())  # K not a multiple of the group
    with pytest.raises(ValueError, match="multiple"):
        int4_cuda.compile_cubin(90, 16, 96, False, False, Tiling())  # a group smaller than one 16-byte chunk
    with pytest.raises(ValueError, match="even"):
        int4_cuda.compile_cubin(90, 64, 128, True, False, Tiling(rows=3))
    with pytest.raises(ValueError, match="at least one"):
        int4_cuda.compile_cubin(90, 64, 128, False, False, Tiling(rows=0))  # _grid chooses first


def test_not_available_on_cpu_with_a_reason():
    assert not int4_cuda.available(torch.device("cpu"))
    assert int4_cuda.unavailable_reason


def test_a_missing_nvrtc_library_means_unavailable(monkeypatch):
    def not_found():
        raise RuntimeError("libnvrtc.so not found")

    monkeypatch.setattr(int4_cuda, "nvrtc", types.SimpleNamespace(nvrtcVersion=not_found))
    assert int4_cuda.nvrtc_version() is None
    assert not int4_cuda.available(torch.device("cuda"))
    assert "NVRTC cannot be loaded: libnvrtc.so not found" in int4_cuda.unavailable_reason


def test_arguments_are_checked_before_anything_runs():
    words, scales = torch.zeros(8, 16, dtype=torch.int32), torch.ones(8, 2, dtype=torch.float16)
    x = torch.zeros(1, 128, dtype=torch.float16)
    with pytest.raises(TypeError, match="float16"):
        int4_cuda.int4_gemv(x.float(), words, scales, 64)
    with pytest.raises(ValueError, match="do not fit"):
        int4_cuda.int4_gemv(x, words, scales, 32)
    with pytest.raises(ValueError, match="residual"):
        int4_cuda.int4_gemv(x, words, scales, 64, residual=torch.zeros(1, 8))
    with pytest.raises(ValueError, match="GLU"):
        int4_cuda.int4_gemv(x, words, scales, 64, glu=True, residual=torch.zeros(1, 8, dtype=torch.float16))
    with pytest.raises(ValueError, match="norm_weight"):
        int4_cuda.int4_gemv(x, words, scales, 64, norm_weight=torch.ones(64, dtype=torch.float16))
    with pytest.raises(ValueError, match="norm_weight"):
        int4_cuda.int4_gemv(x, words, scales, 64, norm_weight=torch.ones(128))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the lab runs for real where there is a GPU")
def test_lab_without_a_gpu_is_one_error_line(tmp_path):
    lab = Path(__file__).resolve().parents[2] / "bench" / "int4_cuda_lab.py"
    result = subprocess.run([sys.executable, lab, "--out", tmp_path], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stderr == "error: the INT4 CUDA lab needs a CUDA GPU\n"
    assert not list(tmp_path.iterdir())


def _weights(n, k, group):
    # Scaled as a model's weights are (outputs of order one): with unit weights silu(gate) * up over K = 13,696
    # reaches 1e5, beyond float16.
    q, s = quantize_int4(torch.randn(n, k, device="cuda", dtype=torch.float16) * k ** -0.5, group)
    return pack_half2_words(q), s.half(), dequantize_int4(q, s.half().float())


def _reference(x, w, glu=False, residual=None):
    y = x.float() @ w.T
    if glu:
        y = torch.nn.functional.silu(y[..., 0::2]) * y[..., 1::2]
    return y if residual is None else y + residual.float()


def _close(y, ref, glu=False):
    tolerance = GLU_TOLERANCE if glu else TOLERANCE
    return y.shape == ref.shape and float((y.float() - ref).norm() / ref.norm()) < tolerance


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize("n,k,group", [(7, 96, 32), (1000, 320, 64), (1000, 320, 32), (12288, 4096, 128),
                                       (4096, 11008, 64), (5120, 13696, 128), (4096, 4096, 32)])
@pytest.mark.parametrize("glu", [False, True])
def test_matches_float32_reference(n, k, group, m, glu):
    n += n % 2 if glu else 0
    words, scales, w = _weights(n, k, group)
    x = torch.randn(m, k, device="cuda", dtype=torch.float16)
    y = int4_cuda.int4_gemv(x, words, scales, group, glu=glu)
    assert _close(y, _reference(x, w, glu), glu)


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("tiling", [Tiling(rows=1, unroll=1, warps=1), Tiling(rows=2, unroll=8, warps=4),
                                    Tiling(rows=4, unroll=2, warps=8), Tiling(rows=4, unroll=4, warps=2),
                                    Tiling(rows=2, unroll=6, l2_prefetch=True),
                                    Tiling(rows=1, unroll=2, warps=1, blocks_per_sm=1),
                                    Tiling(rows=1, unroll=4, warps=2, blocks_per_sm=1)])
def test_every_tiling_matches_with_ragged_rows_and_columns(tiling):
    # 1001 rows and 11008 columns: a partial last warp and a partial last step along K (and tiles of one or two
    # rows, enough for a block an SM to loop over several each)
    words, scales, w = _weights(1001, 11008, 64)
    x = torch.randn(2, 11008, device="cuda", dtype=torch.float16)
    assert _close(int4_cuda.int4_gemv(x, words, scales, 64, tiling=tiling), _reference(x, w))


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize("n,k,group,glu,residual", [
    (7, 96, 32, False, False), (1000, 320, 64, True, False), (1001, 352, 32, False, True),
    (12288, 4096, 128, False, False), (5120, 5120, 64, False, True), (27392, 5120, 128, True, False),
])
@pytest.mark.parametrize("loop", [{}, dict(blocks_per_sm=0), dict(blocks_per_sm=1)])
def test_norm_prologue_matches_rms_norm_then_gemv(n, k, group, glu, residual, m, loop):
    words, scales, w = _weights(n, k, group)
    h = torch.randn(m, k, device="cuda", dtype=torch.float16) * 3
    norm_weight = (1 + 0.1 * torch.randn(k, device="cuda")).half()
    added = torch.randn(m, n // 2 if glu else n, device="cuda", dtype=torch.float16) if residual else None
    x = pointwise.rms_norm(h, norm_weight, 1e-6)
    tiling = dataclasses.replace(int4_cuda.default_tiling(n, k), **loop)  # blocks looping over tiles normalise once
    y = int4_cuda.int4_gemv(h, words, scales, group, glu=glu, residual=added, norm_weight=norm_weight, norm_eps=1e-6,
                            tiling=tiling)
    unfused = int4_cuda.int4_gemv(x, words, scales, group, glu=glu, residual=added)
    assert y.shape == unfused.shape
    assert float((y.float() - unfused.float()).norm() / unfused.float().norm()) < NORM_TOLERANCE
    assert _close(y, _reference(x, w, glu, added), glu)


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("k", [4096, 5120])
def test_norm_prologue_rounds_as_rms_norm_bit_for_bit_where_the_sum_of_squares_is_exact(k):
    # Quarters up to 4: their squares are sixteenths, summed exactly in float32 in any order; then only the
    # roundings of h * rstd and of weight * that can differ, and must not.
    h = (torch.randint(-16, 17, (3, k), device="cuda") / 4).half()
    norm_weight = (1 + 0.1 * torch.randn(k, device="cuda")).half()
    words, scales, _ = _weights(1000, k, 64)
    y = int4_cuda.int4_gemv(h, words, scales, 64, norm_weight=norm_weight, norm_eps=1e-6)
    assert torch.equal(y, int4_cuda.int4_gemv(pointwise.rms_norm(h, norm_weight, 1e-6), words, scales, 64))


@pytest.mark.gpu
@cuda
def test_many_rows_loop_over_tiles_in_a_grid_the_gpu_holds_at_once():
    # W_pack's 12,288 rows of the 7B shape: as many blocks as the SMs hold at once, each taking several tiles;
    # o_proj's 4,096 rows (512 tiles) do not fill two such grids: a block per tile, built without the loop. Both
    # take two rows a warp (rows of one step of a warp's loop).
    device = torch.device("cuda", torch.cuda.current_device())
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    tiling = int4_cuda.default_tiling(12288, 4096)
    looping, blocks = int4_cuda._grid(device, 128, 4096, False, False, True, tiling, 12288)
    function, resident = int4_cuda._kernel(device, 128, 4096, False, False, True, dataclasses.replace(tiling, rows=2))
    assert function is looping and blocks == sms * resident < 12288 // 8 and 1 <= resident <= tiling.blocks_per_sm
    tiling = int4_cuda.default_tiling(4096, 4096)
    one_each, tiles = int4_cuda._grid(device, 128, 4096, False, True, False, tiling, 4096)
    without_loop, _ = int4_cuda._kernel(device, 128, 4096, False, True, False,
                                        dataclasses.replace(tiling, rows=2, blocks_per_sm=0))
    assert tiles == 4096 // 8 and one_each is without_loop


@pytest.mark.gpu
@cuda
def test_one_row_a_warp_where_those_tiles_fit_one_wave():
    # down of the 7B (4,096 rows of 11,008) and 13B (5,120 of 13,696) shapes: one row a warp only where the 4-row
    # tiles fit in one wave of resident blocks; a GLU matrix or rows of one step: two; results as any tiling's.
    device = torch.device("cuda", torch.cuda.current_device())
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    for n, k in [(4096, 11008), (5120, 13696)]:
        tiling = int4_cuda.default_tiling(n, k)
        one_row = dataclasses.replace(tiling, rows=1, blocks_per_sm=0)
        one_row_function, resident = int4_cuda._kernel(device, 64, k, False, True, False, one_row)
        function, blocks = int4_cuda._grid(device, 64, k, False, True, False, tiling, n)
        if n // 4 <= sms * resident:
            assert blocks == n // 4 and function is one_row_function
        else:
            assert blocks == n // 8
    assert int4_cuda._grid(device, 64, 11008, True, False, False, int4_cuda.default_tiling(4096, 11008), 4096)[1] == 512
    assert int4_cuda._grid(device, 64, 4096, False, True, False, int4_cuda.default_tiling(512, 4096), 512)[1] == 64
    words, scales, w = _weights(4096, 11008, 64)
    x, residual = (torch.randn(1, n, device="cuda", dtype=torch.float16) for n in (11008, 4096))
    assert _close(int4_cuda.int4_gemv(x, words, scales, 64, residual=residual), _reference(x, w, residual=residual))


def test_the_rows_a_warp_rule_without_a_gpu(monkeypatch):
    # _rows_per_warp with a made-up device of 100 SMs and kernels of 8 resident blocks: 800 tiles fit in one wave.
    monkeypatch.setattr(int4_cuda, "_kernel", lambda *args: (None, 8))
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device: types.SimpleNamespace(multi_processor_count=100))
    rows = lambda n, k, glu=False: int4_cuda._rows_per_warp(None, 64, k, glu, True, False,  # noqa: E731
                                                            int4_cuda.default_tiling(n, k), n)
    assert rows(3200, 11008) == 1 and rows(3204, 11008) == 2  # 800 tiles of 4 rows fit, 801 do not
    assert rows(3200, 11008, glu=True) == 2  # GLU pairs rows
    # default_tiling's loads cover a row of up to 4,096 columns in one step of a warp's loop
    assert rows(3200, 4096) == rows(3200, 2048) == 2 and rows(3200, 4160) == 1


@pytest.mark.gpu
@cuda
def test_residual_and_out():
    words, scales, w = _weights(4096, 4096, 128)
    x = torch.randn(1, 1, 4096, device="cuda", dtype=torch.float16)
    residual = torch.randn(1, 1, 4096, device="cuda", dtype=torch.float16)
    out = torch.empty(1, 1, 4096, device="cuda", dtype=torch.float16)
    y = int4_cuda.int4_gemv(x, words, scales, 128, out=out, residual=residual)
    assert y is out and _close(y, _reference(x, w, residual=residual))


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("pdl,launch_next_early,loop", [(False, False, {}), (True, False, {}), (True, True, {}),
                                                       (True, True, dict(rows=1, warps=2, blocks_per_sm=1)),
                                                       (True, False, dict(rows=1, warps=2, blocks_per_sm=2))])
def test_chain_in_a_cuda_graph_with_and_without_pdl(pdl, launch_next_early, loop):
    # Each GEMV reads what the one before wrote, with a torch kernel (no PDL) between two of them: PDL's wait
    # must hold the reads of x back until the producer is done, in eager launches and in a replayed graph.
    if pdl and torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("PDL needs compute capability 9.0")
    layers = [_weights(2048, 2048, 64) for _ in range(4)]
    tiling = dataclasses.replace(int4_cuda.default_tiling(2048, 2048), launch_next_early=launch_next_early, **loop)
    x = torch.randn(1, 2048, device="cuda", dtype=torch.float16)

    def chain(x):
        for i, (words, scales, _) in enumerate(layers):
            x = int4_cuda.int4_gemv(x, words, scales, 64, pdl=pdl, tiling=tiling)
            x = x / x.norm() * 40 if i == 1 else x * 0.05
        return x

    ref = x.float()
    for i, (_, _, w) in enumerate(layers):
        ref = _reference(ref, w)
        ref = ref / ref.norm() * 40 if i == 1 else ref * 0.05
    eager = chain(x)
    assert float((eager.float() - ref).norm() / ref.norm()) < 1e-2  # four roundings to fp16 compound
    static_x = x.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        chain(static_x)  # warm-up: compiled and loaded outside capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y = chain(static_x)
    graph.replay()
    assert torch.equal(static_y, eager)
    static_x.copy_(torch.randn_like(x))
    graph.replay()
    assert torch.equal(static_y, chain(static_x))


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("loop", [0, 1])
def test_the_timeline_stamps_every_block_in_order_and_changes_no_result(loop):
    from bench.gemv_timeline import read_stamps, reset

    words, scales, w = _weights(4096, 4096, 64)
    h = torch.randn(1, 4096, device="cuda", dtype=torch.float16)
    norm_weight = (1 + 0.1 * torch.randn(4096, device="cuda")).half()
    tiling = Tiling(blocks_per_sm=loop)
    y = int4_cuda.int4_gemv(h, words, scales, 64, norm_weight=norm_weight, tiling=tiling)
    stamped = dataclasses.replace(tiling, timeline=True)
    device = torch.device("cuda", torch.cuda.current_device())
    function, blocks = int4_cuda._grid(device, 64, 4096, False, False, True, stamped, 4096)
    module = next(module for module, f, _ in int4_cuda._kernels.values() if f is function)
    reset([("W_pack", module)])
    assert torch.equal(int4_cuda.int4_gemv(h, words, scales, 64, norm_weight=norm_weight, tiling=stamped), y)
    torch.cuda.synchronize()
    stamps = read_stamps(module)
    assert len(stamps) == blocks and (stamps[:, 0] > 0).all()
    assert (stamps[:, 0] <= stamps[:, 1]).all() and (stamps[:, 1] <= stamps[:, 2]).all()
    assert (stamps[:, 2] <= stamps[:, 3]).all()
