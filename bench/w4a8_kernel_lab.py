"""The draft's INT4 GEMV at one token: f16x2 (int4_triton, fp16 activations) against dp4a with int8
activations (below), per Baichuan2 shape, weights read from DRAM (copies cycled: no L2 hits).

    python bench/w4a8_kernel_lab.py [--shapes 7b 13b] [--json OUT.json]

Times are CUDA-graph replays of back-to-back calls with programmatic dependent launch as the draft uses it,
median of 20 replays; bytes are the packed weights and their scales.

The W4A8 kernels (not used by the engine: measured here only):

The f16x2 kernel of int4_triton turns every weight into a half before multiplying: about 26 instructions
per word of eight weights, so the draft's matrices run at the rate instructions issue, not at the rate
memory delivers. Here the activations are quantized once per step instead, to int8 with one scale per group
(the weight's group), and each word of eight nibbles meets them in two `dp4a` instructions (four int8
products summed into an int32), as llama.cpp's quantized GEMVs do. The nibbles are unsigned (q + 8), so
a group's integer sum is corrected by 8 * sum(x_q) once per group.

Layout: the weights are quantize.pack_nibbles's bytes read as int32 words [N, K/8]: word i of a group holds
columns 4i..4i+3 of the group in its low nibbles and columns GROUP/2 + 4i.. in its high ones, so the int8
activations, in their natural order and read as int32 words, are two contiguous slices per group.

`norm_quantize` is the RMS norm (and the residual add before it) of the draft layer, writing the normed
row quantized: the quantization would cost no kernel of its own where a norm feeds the matrix (W_pack,
gate/up). `quantize` is the same without the norm, for inputs that come from elsewhere.

Under Triton's CPU interpreter (TRITON_INTERPRET=1), which cannot run inline PTX, `dp4a` is computed with
shifts and multiplies: the same integers, so the kernels' logic can be checked on CPU against
`matmul_reference`.
"""
import os
import sys
from pathlib import Path
from typing import NamedTuple

import torch
import triton
import triton.language as tl

if not __package__:  # run as a file: the packages live in the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import SHAPES, cycled_copies, graph_ms, parser, require_cuda, write_json  # noqa: E402
from selfspec.accel import launch, pointwise as pointwise_triton  # noqa: E402
from selfspec.errors import run_main  # noqa: E402
from selfspec.accel.int4 import int4_matmul_half2, store_rows  # noqa: E402
from selfspec.accel.launch import let_next_kernel_launch, wait_for_inputs  # noqa: E402
from selfspec.quantize import dequantize_int4, pack_half2_words, pack_nibbles, quantize_int4, unpack_nibbles  # noqa: E402


class QuantizedActivation(NamedTuple):
    """Rows of activations quantized per group: values = q * scales (q int8 [M, K], scales float32
    [M, K/group]); sums int32 [M, K/group] = the sum of q over each group. `shape` is the original's."""
    q: torch.Tensor
    scales: torch.Tensor
    sums: torch.Tensor
    shape: torch.Size

    @property
    def group_size(self) -> int:
        return self.q.shape[-1] // self.scales.shape[-1]

    def dequantize(self, dtype=torch.float32) -> torch.Tensor:
        m, k = self.q.shape
        groups = self.scales.shape[1]
        return (self.q.view(m, groups, -1).float() * self.scales[..., None]).view(self.shape).to(dtype)


def quantize_reference(x: torch.Tensor, group_size: int) -> QuantizedActivation:
    """What the kernels compute, in torch: per group, scale = absmax / 127 and q = round(x / scale)."""
    k = x.shape[-1]
    g = x.reshape(-1, k // group_size, group_size).float()
    scales = g.abs().amax(-1).clamp(min=1e-10) / 127
    q = torch.round(g / scales[..., None]).clamp(-127, 127).to(torch.int8)
    return QuantizedActivation(q.view(-1, k), scales, q.sum(-1, dtype=torch.int32), x.shape)


def matmul_reference(x: QuantizedActivation, packed: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """x times the INT4 weight (pack_nibbles bytes [N, K/2], scales [N, K/group]) in float32, from the
    quantized activations: what the kernel computes, up to the order of the float32 sums."""
    group = x.group_size
    w = dequantize_int4(unpack_nibbles(packed.view(torch.uint8), group), scales.float())
    return (x.dequantize().reshape(-1, w.shape[1]) @ w.T).view(*x.shape[:-1], -1)


_DP4A_WORD = """
{
.reg .b32 lo, hi;
and.b32 lo, $1, 0x0F0F0F0F;
shr.u32 hi, $1, 4;
and.b32 hi, hi, 0x0F0F0F0F;
dp4a.u32.s32 $0, lo, $2, 0;
dp4a.u32.s32 $0, hi, $3, $0;
}
"""
# One word of eight unsigned nibbles ($1) times two words of four int8 activations each ($2: the low
# nibbles' columns, $3: the high nibbles'), summed exactly into an int32.


@triton.jit
def _dot4(w, x):
    # The four bytes of w (0..15 each) times the four signed bytes of x, summed: dp4a without PTX.
    total = tl.zeros_like(w)
    for b in tl.static_range(4):
        total += ((w >> (8 * b)) & 0xFF) * ((x << (24 - 8 * b)) >> 24)
    return total

@triton.jit
def _word_dots(words, x_low, x_high, ASM: tl.constexpr, EMULATE: tl.constexpr):
    if not EMULATE:
        return tl.inline_asm_elementwise(ASM, "=r,r,r,r", [words, x_low, x_high], dtype=tl.int32,
                                         is_pure=True, pack=1)
    return _dot4(words & 0x0F0F0F0F, x_low) + _dot4((words >> 4) & 0x0F0F0F0F, x_high)

@triton.jit
def _w4a8_gemv_kernel(
    xq_ptr, xs_ptr, xsum_ptr, w_ptr, s_ptr, y_ptr, N, K,
    ASM: tl.constexpr, EMULATE: tl.constexpr, GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr, GLU: tl.constexpr,
    PDL: tl.constexpr, EVEN: tl.constexpr,
):
    # xq_ptr: int8 activations read as int32 words [M, K/4]; xs_ptr, xsum_ptr: their scales and group sums
    # [M, K/GROUP]; w_ptr: int32 words [N, K/8]; tiles of [BLOCK_N rows, BLOCK_G groups, GROUP/8 words].
    WORDS: tl.constexpr = GROUP // 8
    m = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    n_groups = K // GROUP
    g = tl.arange(0, BLOCK_G)
    i = tl.arange(0, WORDS)
    wait_for_inputs(PDL)
    acc = tl.zeros((BLOCK_N, BLOCK_G), dtype=tl.float32)
    for g0 in range(0, n_groups, BLOCK_G):
        groups = g0 + g
        w_ptrs = w_ptr + rows[:, None, None] * (K // 8) + groups[None, :, None] * WORDS + i[None, None, :]
        x_ptrs = xq_ptr + m * (K // 4) + groups[:, None] * (2 * WORDS) + i[None, :]
        s_ptrs = s_ptr + rows[:, None] * n_groups + groups[None, :]
        if EVEN:
            words = tl.load(w_ptrs)
            x_low, x_high = tl.load(x_ptrs), tl.load(x_ptrs + WORDS)
            scale = tl.load(s_ptrs)
            x_scale = tl.load(xs_ptr + m * n_groups + groups)
            x_sum = tl.load(xsum_ptr + m * n_groups + groups)
        else:
            g_ok = groups < n_groups
            ok = row_ok[:, None] & g_ok[None, :]
            words = tl.load(w_ptrs, mask=ok[:, :, None], other=0)
            x_low = tl.load(x_ptrs, mask=g_ok[:, None], other=0)
            x_high = tl.load(x_ptrs + WORDS, mask=g_ok[:, None], other=0)
            scale = tl.load(s_ptrs, mask=ok, other=0.0)
            x_scale = tl.load(xs_ptr + m * n_groups + groups, mask=g_ok, other=0.0)
            x_sum = tl.load(xsum_ptr + m * n_groups + groups, mask=g_ok, other=0)
        shape: tl.constexpr = (BLOCK_N, BLOCK_G, WORDS)
        dots = _word_dots(words, tl.broadcast_to(x_low[None, :, :], shape),
                          tl.broadcast_to(x_high[None, :, :], shape), ASM, EMULATE)
        # sum over the group of (q + 8) * x_q, less 8 * sum(x_q): the group's exact integer dot product
        exact = tl.sum(dots, axis=2) - 8 * x_sum[None, :]
        acc += exact.to(tl.float32) * (scale.to(tl.float32) * x_scale[None, :])
    let_next_kernel_launch(PDL)
    if GLU:  # rows interleave gate and up: silu(gate) * up is stored, half as many outputs
        out_ptr = y_ptr + m * (N // 2)
    else:
        out_ptr = y_ptr + m * N
    store_rows(tl.sum(acc, axis=1), out_ptr, tl.program_id(0) * BLOCK_N, N, BLOCK_N, GLU)

CONFIGS = [
    triton.Config({"BLOCK_N": bn, "BLOCK_G": bg}, num_warps=w, num_stages=s)
    for bn, bg, w, s in [(4, 8, 2, 3), (8, 8, 4, 3), (8, 4, 2, 3), (16, 4, 4, 3), (16, 8, 4, 3),
                         (16, 8, 8, 4), (32, 4, 4, 3), (32, 8, 8, 3), (8, 16, 4, 4), (16, 16, 8, 3)]
]

def _whole_tiles(meta) -> bool:
    return meta["N"] % meta["BLOCK_N"] == 0 and meta["K"] // meta["GROUP"] % meta["BLOCK_G"] == 0


@triton.jit
def _norm_quantize_kernel(x_ptr, delta_ptr, w_ptr, h_ptr, q_ptr, s_ptr, sum_ptr, eps,
                          DIM: tl.constexpr, GROUP: tl.constexpr, BLOCK_GROUPS: tl.constexpr, ADD: tl.constexpr,
                          NORM: tl.constexpr, PDL: tl.constexpr):
    # One program per row: h = x (+ delta, stored: the residual stream), normed as
    # pointwise_triton._rms_norm_kernel rounds it (NORM), then quantized per group to int8.
    let_next_kernel_launch(PDL)
    wait_for_inputs(PDL)
    row = tl.program_id(0).to(tl.int64)
    GROUPS: tl.constexpr = DIM // GROUP
    group = tl.arange(0, BLOCK_GROUPS)
    g_ok = group < GROUPS
    idx = group[:, None] * GROUP + tl.arange(0, GROUP)[None, :]
    ok = g_ok[:, None]
    h = tl.load(x_ptr + row * DIM + idx, mask=ok, other=0.0)
    if ADD:
        h = (h + tl.load(delta_ptr + row * DIM + idx, mask=ok, other=0.0)).to(h.dtype)
        tl.store(h_ptr + row * DIM + idx, h, mask=ok)
    v = h.to(tl.float32)
    if NORM:
        normed = (v * tl.rsqrt(tl.sum(tl.sum(v * v, axis=1), axis=0) / DIM + eps)).to(h.dtype)
        w = tl.load(w_ptr + idx, mask=ok, other=0.0)
        v = (w.to(tl.float32) * normed.to(tl.float32)).to(h.dtype).to(tl.float32)
    scale = tl.maximum(tl.max(tl.abs(v), axis=1), 1e-10) / 127.0
    q = (tl.math.div_rn(v, scale[:, None]) + 12582912.0) - 12582912.0  # round half to even, as torch.round
    q = tl.minimum(tl.maximum(q, -127.0), 127.0).to(tl.int32)
    tl.store(q_ptr + row * DIM + idx, q.to(tl.int8), mask=ok)
    tl.store(s_ptr + row * GROUPS + group, scale, mask=g_ok)
    tl.store(sum_ptr + row * GROUPS + group, tl.sum(q, axis=1), mask=g_ok)


def _norm_quantize(x, delta, weight, eps: float, group_size: int):
    dim = x.shape[-1]
    if dim % group_size or group_size & (group_size - 1):
        raise ValueError(f"w4a8 quantization needs power-of-two groups that divide the row, got {dim}/{group_size}")
    x = x.contiguous()
    rows = x.numel() // dim
    h = torch.empty_like(x) if delta is not None else x
    q = torch.empty(rows, dim, dtype=torch.int8, device=x.device)
    scales = torch.empty(rows, dim // group_size, dtype=torch.float32, device=x.device)
    sums = torch.empty(rows, dim // group_size, dtype=torch.int32, device=x.device)
    _norm_quantize_kernel[(rows,)](
        x, delta.contiguous() if delta is not None else x, weight if weight is not None else x, h, q, scales, sums,
        eps, DIM=dim, GROUP=group_size, BLOCK_GROUPS=triton.next_power_of_2(dim // group_size),
        ADD=delta is not None, NORM=weight is not None, PDL=launch.enabled, launch_pdl=launch.enabled, num_warps=4,
    )
    return h, QuantizedActivation(q, scales, sums, x.shape)


def norm_quantize(x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float, group_size: int):
    """(x + delta, or x if delta is None; the RMS norm of that times weight, quantized per group)."""
    return _norm_quantize(x, delta, weight, eps, group_size)


def quantize(x: torch.Tensor, group_size: int) -> QuantizedActivation:
    """x [..., K] quantized per group of its last dimension."""
    return _norm_quantize(x, None, None, 0.0, group_size)[1]


def w4a8_matmul(x: QuantizedActivation, words: torch.Tensor, scales: torch.Tensor, config: triton.Config,
                glu: bool = False, dtype=torch.float16) -> torch.Tensor:
    """Quantized activations [..., K] times the INT4 weight as int32 words [N, K/8] (quantize.pack_nibbles's
    bytes viewed as int32), scales [N, K/group], with `config`, one of CONFIGS (the lab times each). With
    `glu` the rows interleave gate and up and the result is silu(gate) * up, [..., N/2]."""
    n, k = words.shape[0], words.shape[1] * 8
    group = x.group_size
    if k != x.q.shape[1] or scales.shape[1] != k // group:
        raise ValueError(f"w4a8_matmul: K {x.q.shape[1]} and group {group} do not match the weight [{n}, {k}]")
    n_out = n // 2 if glu else n
    m = x.q.shape[0]
    y = torch.empty(m, n_out, dtype=dtype, device=words.device)
    blocks = config.kwargs
    _w4a8_gemv_kernel[(triton.cdiv(n, blocks["BLOCK_N"]), m)](
        x.q.view(torch.int32), x.scales, x.sums, words, scales, y, n, k,
        ASM=_DP4A_WORD, EMULATE=os.environ.get("TRITON_INTERPRET") == "1", GROUP=group, GLU=glu,
        PDL=launch.enabled, launch_pdl=launch.enabled, EVEN=_whole_tiles(dict(blocks, N=n, K=k, GROUP=group)),
        **blocks, num_warps=config.num_warps, num_stages=config.num_stages)
    return y.view(*x.shape[:-1], n_out)


def matrices(shape: str) -> dict:
    h, i = SHAPES[shape]["hidden_size"], SHAPES[shape]["intermediate_size"]
    return {"W_pack": (3 * h, h, False), "o_proj": (h, h, False), "gate+up": (2 * i, h, True), "down": (h, i, False)}


@torch.inference_mode()
def main():
    p = parser(__doc__)
    p.add_argument("--shapes", nargs="+", default=["7b"], choices=sorted(SHAPES))
    p.add_argument("--group-size", type=int, default=64)
    p.add_argument("--json")
    args = p.parse_args()
    require_cuda("the W4A8 lab")
    launch.set_pdl(launch.available(torch.device("cuda")))
    group = args.group_size
    results = []
    for shape in args.shapes:
        for name, (n, k, glu) in matrices(shape).items():
            w = torch.randn(n, k, device="cuda", dtype=torch.float16)
            q, scales = quantize_int4(w, group)
            s16 = scales.half()
            x = torch.randn(1, k, device="cuda", dtype=torch.float16)
            ref = x.float() @ (q.float().view(n, -1, group) * s16.float()[..., None]).view(n, k).T
            if glu:
                ref = torch.nn.functional.silu(ref[:, 0::2]) * ref[:, 1::2]
            xq = quantize(x, group)
            layouts = {"half2": pack_half2_words(q), "w4a8": pack_nibbles(q, group).view(torch.int32)}
            for layout, words in layouts.items():
                nbytes = words.numel() * 4 + s16.numel() * 2
                next_copy, n_copies = cycled_copies((words, s16), 400_000_000)
                configs = [None] if layout == "half2" else CONFIGS
                for config in configs:

                    def call():
                        wc, sc = next_copy()
                        if layout == "half2":
                            return int4_matmul_half2(x, wc, sc, group, glu=glu)
                        return w4a8_matmul(xq, wc, sc, config, glu=glu)

                    y = call()
                    err = float((y.float() - ref).norm() / ref.norm())
                    us = graph_ms(call, calls=n_copies) * 1e3
                    cfg = None if config is None else [*config.kwargs.values(), config.num_warps, config.num_stages]
                    results.append({"shape": shape, "matrix": name, "layout": layout, "config": cfg, "us": us,
                                    "GB/s": nbytes / us / 1e3, "rel_error": err})
            best = {}
            for r in results:
                if r["shape"] == shape and r["matrix"] == name and (r["layout"] not in best or r["us"] < best[r["layout"]]["us"]):
                    best[r["layout"]] = r
            print(f"{shape} {name:8s} " + "  ".join(f"{lay} {r['us']:6.1f} us {r['GB/s']:5.0f} GB/s err {r['rel_error']:.1e} {r['config']}"
                                                   for lay, r in best.items()), flush=True)
        h = SHAPES[shape]["hidden_size"]
        x, d = torch.randn(1, 1, h, device="cuda", dtype=torch.float16), torch.randn(1, 1, h, device="cuda", dtype=torch.float16)
        wt = torch.rand(h, device="cuda", dtype=torch.float16)
        norm_us = graph_ms(lambda: pointwise_triton.add_rms_norm(x, d, wt, 1e-6)) * 1e3
        quant_us = graph_ms(lambda: norm_quantize(x, d, wt, 1e-6, group)) * 1e3
        print(f"{shape} add+norm {norm_us:.2f} us, add+norm+quantize {quant_us:.2f} us")
        results.append({"shape": shape, "add_rms_norm_us": norm_us, "norm_quantize_us": quant_us})
    write_json(args.json, results)


if __name__ == "__main__":
    sys.exit(run_main(main))
