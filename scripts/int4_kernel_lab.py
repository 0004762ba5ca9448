"""Compare the Triton INT4 GEMV layouts at M=1 on Baichuan2-7B shapes, sweeping block configurations.

    python scripts/int4_kernel_lab.py [--json OUT.json]   # GB/s per shape, layout and config, best first
    python scripts/int4_kernel_lab.py --layouts half2 --cold  # weights from DRAM, as in a decode step

"half2" is the kernel in use on NVIDIA GPUs with fp16 activations (selfspec/int4_triton.py: lop3 nibbles
to half2, f16x2 arithmetic in inline PTX); "bytes" the portable one (uint8 pairs, integer-to-float
conversions), in use elsewhere, and on NVIDIA before half2. Variants kept for the comparison, none faster
than "bytes" on an H100 (docs/performance.md): "words", int32 words laid out so that each nibble position
meets one contiguous slice of the activations, nibbles turned into floats by float32 bit tricks;
"prefetch", "bytes" loading the next tile's weights before this tile's arithmetic (two tiles in flight);
"mma", tensor cores on x padded to 16 rows; "half2next", "half2" loading the next tile's words and scales
before this tile's arithmetic. "half2" runs the kernel in use with SUM_PER_WORD (each word's product summed in
place, the words reduced after the loop); "half2reduce" is that kernel as it was before 2026-12-02, reducing
each tile over its words in every iteration (the autotuner now chooses between the two ways per shape).
Times are CUDA-graph replays of 20 back-to-back calls (no launch gaps), median of 20 replays. Those calls
read the same weights, which for the smaller matrices stay in the H100's 50 MB L2 cache; with --cold they
cycle through copies of the weights (at least 200 MB in all), so that every call reads DRAM as the draft
step does, and the half2 sweep adds deeper pipelines (num_stages 3, 4).
"""
import argparse
import json
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark import graph_ms, require_cuda  # noqa: E402
from selfspec.errors import run_main  # noqa: E402
from selfspec.int4_triton import _HALF2_DOT, _int4_gemv_kernel, _int4_half2_gemv_kernel, _whole_tiles  # noqa: E402
from selfspec.quantize import dequantize_int4, pack_half2_words, pack_nibbles, quantize_int4  # noqa: E402


@triton.jit
def nibble_times_x(words, x_ptrs, x_mask, SHIFT: tl.constexpr):
    # (n - 8) * 2^SHIFT, exactly, for the nibble n at bits SHIFT..SHIFT+3; x scaled by 2^-SHIFT to match.
    value = ((words & (15 << SHIFT)) | 0x4B000000).to(tl.float32, bitcast=True) - (8388608.0 + 8.0 * (1 << SHIFT))
    x = tl.load(x_ptrs, mask=x_mask, other=0.0).to(tl.float32) * (1.0 / (1 << SHIFT))
    return value * x[None, :, :]


@triton.jit
def words_gemv_kernel(
    x_ptr, w_ptr, s_ptr, y_ptr, N, K, stride_xm, stride_ym,
    GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr,
):
    # Weights as int32 words (pack_int4_words below): word i of a group holds, in nibble t, column
    # t * GROUP/8 + i, so for each t the activations are one contiguous slice. A nibble becomes a float
    # without an int-to-float conversion: (word & (0xF << s)) | 0x4B000000 is the float 2^23 + n * 2^s
    # exactly (s = 4t); subtracting 2^23 + 8 * 2^s leaves (n - 8) * 2^s, and the activations of nibble t
    # are pre-scaled by 2^-s. Nibbles 4..7 are shifted down once per word (s = 4(t - 4) for them).
    W: tl.constexpr = GROUP // 8
    pid_n = tl.program_id(0)
    m = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    n_groups = K // GROUP
    g = tl.arange(0, BLOCK_G)
    i = tl.arange(0, W)
    total = tl.zeros((BLOCK_N, BLOCK_G, W), dtype=tl.float32)
    for g0 in range(0, n_groups, BLOCK_G):
        groups = g0 + g
        g_ok = groups < n_groups
        ok = row_ok[:, None] & g_ok[None, :]
        words = tl.load(w_ptr + rows[:, None, None] * (K // 8) + groups[None, :, None] * W + i[None, None, :],
                        mask=ok[:, :, None], other=0)
        high = words >> 16
        x_base = x_ptr + m * stride_xm + groups[:, None] * GROUP + i[None, :]
        part = tl.zeros((BLOCK_N, BLOCK_G, W), dtype=tl.float32)
        for t in tl.static_range(8):
            part += nibble_times_x(words if t < 4 else high, x_base + t * W, g_ok[:, None], 4 * (t % 4))
        scale = tl.load(s_ptr + rows[:, None] * n_groups + groups[None, :], mask=ok, other=0.0).to(tl.float32)
        total += part * scale[:, :, None]
    y = tl.sum(tl.sum(total, axis=2), axis=1)
    tl.store(y_ptr + m * stride_ym + rows, y.to(y_ptr.dtype.element_ty), mask=row_ok)


@triton.jit
def prefetch_gemv_kernel(x_ptr, w_ptr, s_ptr, y_ptr, N, K, stride_xm, stride_ym,
                    GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr):
    # The kept kernel with the next iteration's weights and scales loaded before this one's arithmetic.
    HALF: tl.constexpr = GROUP // 2
    m = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    n_groups = K // GROUP
    g = tl.arange(0, BLOCK_G)
    j = tl.arange(0, HALF)
    w_base = w_ptr + rows[:, None, None] * (K // 2) + g[None, :, None] * HALF + j[None, None, :]
    s_base = s_ptr + rows[:, None] * n_groups + g[None, :]
    ok = row_ok[:, None] & (g < n_groups)[None, :]
    w = tl.load(w_base, mask=ok[:, :, None], other=0x88)
    s = tl.load(s_base, mask=ok, other=0.0)
    acc = tl.zeros((BLOCK_N, BLOCK_G, HALF), dtype=tl.float32)
    for g0 in range(0, n_groups, BLOCK_G):
        groups = g0 + g
        g_ok = groups < n_groups
        nxt = groups + BLOCK_G
        ok_next = row_ok[:, None] & (nxt < n_groups)[None, :]
        w_next = tl.load(w_base + (g0 + BLOCK_G) * HALF, mask=ok_next[:, :, None], other=0x88)
        s_next = tl.load(s_base + g0 + BLOCK_G, mask=ok_next, other=0.0)
        x_ptrs = x_ptr + m * stride_xm + groups[:, None] * GROUP + j[None, :]
        x_low = tl.load(x_ptrs, mask=g_ok[:, None], other=0.0).to(tl.float32)
        x_high = tl.load(x_ptrs + HALF, mask=g_ok[:, None], other=0.0).to(tl.float32)
        low = (w & 0xF).to(tl.float32) - 8.0
        high = (w >> 4).to(tl.float32) - 8.0
        acc += (low * x_low[None, :, :] + high * x_high[None, :, :]) * s.to(tl.float32)[:, :, None]
        w = w_next
        s = s_next
    y = tl.sum(tl.sum(acc, axis=2), axis=1)
    tl.store(y_ptr + m * stride_ym + rows, y.to(y_ptr.dtype.element_ty), mask=row_ok)


@triton.jit
def mma_gemv_kernel(x_ptr, w_ptr, s_ptr, y_ptr, N, K, stride_xm, stride_ym,
                    GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_B: tl.constexpr):
    # Tensor cores: x padded to 16 rows (row 0 real) times dequantized [BLOCK_N, BLOCK_B] tiles, twice per
    # iteration (low and high nibbles: BLOCK_B packed bytes per row).
    HALF: tl.constexpr = GROUP // 2
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    n_groups = K // GROUP
    r = tl.arange(0, 16)
    r_ok = r < 1
    b = tl.arange(0, BLOCK_B)
    acc = tl.zeros((16, BLOCK_N), dtype=tl.float32)
    for b0 in range(0, K // 2, BLOCK_B):
        kb = b0 + b
        group = kb // HALF
        w = tl.load(w_ptr + rows[:, None] * (K // 2) + kb[None, :], mask=row_ok[:, None], other=0x88)
        s = tl.load(s_ptr + rows[:, None] * n_groups + group[None, :], mask=row_ok[:, None], other=0.0)
        # 0x6400 | n is the float16 1024 + n: no integer-to-float conversion (and Triton then pipelines the loads).
        low = ((w & 0xF).to(tl.int16) | 0x6400).to(tl.float16, bitcast=True) - 1032.0
        high = ((w >> 4).to(tl.int16) | 0x6400).to(tl.float16, bitcast=True) - 1032.0
        low = low * s
        high = high * s
        col = group * GROUP + kb % HALF
        x_low = tl.load(x_ptr + r[:, None] * stride_xm + col[None, :], mask=r_ok[:, None], other=0.0)
        x_high = tl.load(x_ptr + r[:, None] * stride_xm + col[None, :] + HALF, mask=r_ok[:, None], other=0.0)
        acc += tl.dot(x_low, tl.trans(low.to(x_low.dtype)))
        acc += tl.dot(x_high, tl.trans(high.to(x_high.dtype)))
    tl.store(y_ptr + r[:, None] * stride_ym + rows[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=r_ok[:, None] & row_ok[None, :])


@triton.jit
def half2_prefetch_gemv_kernel(x_ptr, w_ptr, s_ptr, y_ptr, N, K, stride_xm, stride_ym, ASM: tl.constexpr,
                               GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr,
                               GLU: tl.constexpr, PDL: tl.constexpr):
    # The kept f16x2 kernel with the next iteration's words and scales loaded before this one's arithmetic.
    WORDS: tl.constexpr = GROUP // 8
    m = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    n_groups = K // GROUP
    g = tl.arange(0, BLOCK_G)
    i = tl.arange(0, WORDS)
    tile: tl.constexpr = (BLOCK_N, BLOCK_G, WORDS)
    w_base = w_ptr + rows[:, None, None] * (K // 8) + g[None, :, None] * WORDS + i[None, None, :]
    s_base = s_ptr + rows[:, None] * n_groups + g[None, :]
    ok = row_ok[:, None] & (g < n_groups)[None, :]
    words = tl.load(w_base, mask=ok[:, :, None], other=0)
    scale = tl.load(s_base, mask=ok, other=0.0)
    acc = tl.zeros((BLOCK_N, BLOCK_G), dtype=tl.float32)
    for g0 in range(0, n_groups, BLOCK_G):
        groups = g0 + g
        g_ok = groups < n_groups
        ok_next = row_ok[:, None] & (groups + BLOCK_G < n_groups)[None, :]
        words_next = tl.load(w_base + (g0 + BLOCK_G) * WORDS, mask=ok_next[:, :, None], other=0)
        scale_next = tl.load(s_base + g0 + BLOCK_G, mask=ok_next, other=0.0)
        pairs = x_ptr + m * stride_xm + (groups[:, None] * WORDS + i[None, :]) * 4
        x0 = tl.broadcast_to(tl.load(pairs, mask=g_ok[:, None], other=0)[None, :, :], tile)
        x1 = tl.broadcast_to(tl.load(pairs + 1, mask=g_ok[:, None], other=0)[None, :, :], tile)
        x2 = tl.broadcast_to(tl.load(pairs + 2, mask=g_ok[:, None], other=0)[None, :, :], tile)
        x3 = tl.broadcast_to(tl.load(pairs + 3, mask=g_ok[:, None], other=0)[None, :, :], tile)
        dots = tl.inline_asm_elementwise(ASM, "=r,r,r,r,r,r", [words, x0, x1, x2, x3], dtype=tl.float32,
                                         is_pure=True, pack=1)
        acc += tl.sum(dots, axis=2) * scale.to(tl.float32)
        words = words_next
        scale = scale_next
    y = tl.sum(acc, axis=1) * 16.0
    tl.store(y_ptr + m * stride_ym + rows, y.to(y_ptr.dtype.element_ty), mask=row_ok)


@triton.jit
def half2reduce_gemv_kernel(
    x_ptr, w_ptr, s_ptr, y_ptr, N, K, stride_xm, stride_ym,
    ASM: tl.constexpr, GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr, GLU: tl.constexpr,
    PDL: tl.constexpr,
):
    # The f16x2 kernel of int4_triton.py until 2026-12-02 (without its GLU and PDL paths): the words of each
    # tile reduced to [BLOCK_N, BLOCK_G] in every iteration.
    WORDS: tl.constexpr = GROUP // 8
    m = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    n_groups = K // GROUP
    g = tl.arange(0, BLOCK_G)
    i = tl.arange(0, WORDS)
    tile: tl.constexpr = (BLOCK_N, BLOCK_G, WORDS)
    acc = tl.zeros((BLOCK_N, BLOCK_G), dtype=tl.float32)
    for g0 in range(0, n_groups, BLOCK_G):
        groups = g0 + g
        g_ok = groups < n_groups
        ok = row_ok[:, None] & g_ok[None, :]
        words = tl.load(w_ptr + rows[:, None, None] * (K // 8) + groups[None, :, None] * WORDS + i[None, None, :],
                        mask=ok[:, :, None], other=0)
        pairs = x_ptr + m * stride_xm + (groups[:, None] * WORDS + i[None, :]) * 4  # 4 pairs per word
        x0 = tl.broadcast_to(tl.load(pairs, mask=g_ok[:, None], other=0)[None, :, :], tile)
        x1 = tl.broadcast_to(tl.load(pairs + 1, mask=g_ok[:, None], other=0)[None, :, :], tile)
        x2 = tl.broadcast_to(tl.load(pairs + 2, mask=g_ok[:, None], other=0)[None, :, :], tile)
        x3 = tl.broadcast_to(tl.load(pairs + 3, mask=g_ok[:, None], other=0)[None, :, :], tile)
        dots = tl.inline_asm_elementwise(ASM, "=r,r,r,r,r,r", [words, x0, x1, x2, x3], dtype=tl.float32,
                                         is_pure=True, pack=1)
        scale = tl.load(s_ptr + rows[:, None] * n_groups + groups[None, :], mask=ok, other=0.0).to(tl.float32)
        acc += tl.sum(dots, axis=2) * scale
    y = tl.sum(acc, axis=1) * 16.0
    tl.store(y_ptr + m * stride_ym + rows, y.to(y_ptr.dtype.element_ty), mask=row_ok)


def pack_int4_words(q: torch.Tensor, group_size: int) -> torch.Tensor:
    """int8 [N, K] in [-8, 7] -> int32 [N, K/8]. Within each group, word i holds column t * group_size/8 + i
    in bits 4t..4t+3 (t = 0..7), so a kernel multiplies nibble t of consecutive words by one contiguous
    slice of the activations."""
    n, k = q.shape
    u = (q.to(torch.int64) + 8).view(n, k // group_size, 8, group_size // 8)
    words = (u << (4 * torch.arange(8, device=q.device)).view(1, 1, 8, 1)).sum(2)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32).view(n, k // 8)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="write all results here")
    parser.add_argument("--layouts", nargs="+", default=["half2", "words", "bytes", "prefetch", "mma"])
    parser.add_argument("--cold", action="store_true", help="each call reads other copies of the weights (no L2 hits)")
    args = parser.parse_args()
    require_cuda("the INT4 lab")
    shapes = {"o_proj": (4096, 4096), "W_pack": (12288, 4096), "gate": (11008, 4096), "gate+up": (22016, 4096),
              "down": (4096, 11008), "lm_head": (125696, 4096)}
    group = 64
    half2_sweep = ([(bn, bg, w, s) for bn in (4, 8, 16, 32) for bg in (4, 8, 16) for w in (2, 4, 8) for s in (2, 3, 4)]
                   if args.cold else [(bn, bg, w, 2) for bn in (4, 8, 16) for bg in (2, 4, 8, 16) for w in (1, 2, 4, 8)])
    sweeps = {
        "half2next": [c for c in half2_sweep if c[3] == 2],
        "half2": half2_sweep,
        "half2reduce": half2_sweep,
        "words": [(bn, bg, w, s) for bn in (1, 2, 4, 8) for bg in (4, 8, 16) for w in (2, 4, 8) for s in (2, 3)],
        "bytes": [(1, 16, 2, 2), (1, 16, 2, 3), (4, 16, 4, 3), (8, 16, 4, 3), (16, 8, 4, 3), (8, 8, 4, 3),
                  (2, 32, 4, 3), (8, 32, 8, 3)],  # its autotune list
        "prefetch": [(bn, bg, w, 1) for bn in (1, 2, 4, 8) for bg in (8, 16, 32) for w in (2, 4, 8)],
        "mma": [(bn, bb, w, s) for bn in (16, 32, 64, 128) for bb in (32, 64, 128) for w in (4, 8) for s in (3, 4)],
    }
    kernels = {"half2": (_int4_half2_gemv_kernel, lambda q, group: pack_half2_words(q)),
               "half2next": (half2_prefetch_gemv_kernel, lambda q, group: pack_half2_words(q)),
               "half2reduce": (half2reduce_gemv_kernel, lambda q, group: pack_half2_words(q)),
               "words": (words_gemv_kernel, pack_int4_words), "bytes": (_int4_gemv_kernel, pack_nibbles),
               "prefetch": (prefetch_gemv_kernel, pack_nibbles), "mma": (mma_gemv_kernel, pack_nibbles)}
    results = []
    for name, (n, k) in shapes.items():
        w = torch.randn(n, k, device="cuda", dtype=torch.float16)
        q, scales = quantize_int4(w, group)
        s16 = scales.half()
        x = torch.randn(1, k, device="cuda", dtype=torch.float16)
        ref = x.float() @ dequantize_int4(q, scales).T
        y = torch.empty(1, n, device="cuda", dtype=torch.float16)
        fp16_ms = graph_ms(lambda: torch.nn.functional.linear(x, w))
        print(f"\n{name} {n}x{k}: fp16 F.linear {fp16_ms * 1e3:.1f} us = {2 * n * k / fp16_ms / 1e6:.0f} GB/s")
        for layout, (kernel, pack) in kernels.items():
            if layout not in args.layouts:
                continue
            packed = pack(q, group)
            nbytes = packed.numel() * packed.element_size() + s16.numel() * 2
            copies = [(packed, s16)] + [(packed.clone(), s16.clone()) for _ in range(-(-200_000_000 // nbytes) - 1)
                                        if args.cold]
            turn = iter(range(10**9))
            found = []
            for bn, bg, nw, ns in sweeps[layout]:
                blocks = {"BLOCK_N": bn, ("BLOCK_B" if layout == "mma" else "BLOCK_G"): bg}
                if layout.startswith("half2"):  # activations read as int32 pairs
                    blocks.update(ASM=_HALF2_DOT, GLU=False, PDL=False)
                if layout == "half2":
                    blocks.update(EVEN=_whole_tiles(dict(N=n, K=k, GROUP=group, BLOCK_N=bn, BLOCK_G=bg)),
                                  SUM_PER_WORD=True)

                def call():
                    w_copy, s_copy = copies[next(turn) % len(copies)]
                    xs, stride = (x.view(torch.int32), k // 2) if layout.startswith("half2") else (x, k)
                    call_args = (xs, w_copy, s_copy, y, n, k, stride, n)
                    kernel[(triton.cdiv(n, bn), 1)](*call_args, GROUP=group, **blocks, num_warps=nw, num_stages=ns)
                try:
                    call()
                    err = float((y.float() - ref).norm() / ref.norm())
                    ms = graph_ms(call, calls=max(20, len(copies)))
                except Exception as e:  # noqa: BLE001
                    print(name, layout, (bn, bg, nw, ns), "failed", str(e)[:80])
                    continue
                found.append({"shape": name, "layout": layout, "config": [bn, bg, nw, ns], "us": ms * 1e3,
                              "GB/s": nbytes / ms / 1e6, "rel_error": err})
            found.sort(key=lambda r: -r["GB/s"])
            for r in found[:4]:
                print(f"  {layout:8s} {r['GB/s']:6.0f} GB/s {r['us']:7.1f} us {r['config']} err {r['rel_error']:.1e}")
            results += found
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    sys.exit(run_main(main))
