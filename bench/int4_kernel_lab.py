"""Compare the Triton INT4 GEMV layouts at M=1 on Baichuan2-7B shapes, sweeping block configurations.

    python bench/int4_kernel_lab.py [--json OUT.json]   # GB/s per shape, layout and config, best first
    python bench/int4_kernel_lab.py --layouts half2 --cold  # weights from DRAM, as in a decode step

"half2" is the kernel in use on NVIDIA GPUs with fp16 activations (selfspec/accel/int4.py: lop3 nibbles
to half2, f16x2 arithmetic in inline PTX), summing each word's product in place (SUM_PER_WORD);
"half2reduce" is the same kernel reducing each tile over its words in every iteration (the autotuner
chooses between the two ways per shape); "bytes" is the portable kernel (uint8 pairs, integer-to-float
conversions), in use elsewhere. Variants measured earlier and dropped (int32 words with float32 bit
tricks, two tiles in flight, tensor cores on x padded to 16 rows, half2 with the next tile prefetched)
are in the git history of this file.
Times are CUDA-graph replays of 20 back-to-back calls (no launch gaps), median of 20 replays. Those calls
read the same weights, which for the smaller matrices stay in the H100's 50 MB L2 cache; with --cold they
cycle through copies of the weights (at least 200 MB in all), so that every call reads DRAM as the draft
step does, and the half2 sweep adds deeper pipelines (num_stages 3, 4).
"""
import sys
from pathlib import Path

import torch
import triton

if not __package__:  # run as a file: the packages live in the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import cycled_copies, graph_ms, parser, require_cuda, write_json  # noqa: E402
from selfspec.errors import run_main  # noqa: E402
from selfspec.accel.int4 import _HALF2_DOT, _int4_gemv_kernel, _int4_half2_gemv_kernel, _whole_tiles  # noqa: E402
from selfspec.quantize import dequantize_int4, pack_half2_words, pack_nibbles, quantize_int4  # noqa: E402


def main():
    p = parser(__doc__)
    p.add_argument("--json", help="write all results here")
    p.add_argument("--layouts", nargs="+", default=["half2", "half2reduce", "bytes"],
                   choices=["half2", "half2reduce", "bytes"])
    p.add_argument("--cold", action="store_true", help="each call reads other copies of the weights (no L2 hits)")
    args = p.parse_args()
    require_cuda("the INT4 lab")
    shapes = {"o_proj": (4096, 4096), "W_pack": (12288, 4096), "gate": (11008, 4096), "gate+up": (22016, 4096),
              "down": (4096, 11008), "lm_head": (125696, 4096)}
    group = 64
    half2_sweep = ([(bn, bg, w, s) for bn in (4, 8, 16, 32) for bg in (4, 8, 16) for w in (2, 4, 8) for s in (2, 3, 4)]
                   if args.cold else [(bn, bg, w, 2) for bn in (4, 8, 16) for bg in (2, 4, 8, 16) for w in (1, 2, 4, 8)])
    sweeps = {
        "half2": half2_sweep,
        "half2reduce": half2_sweep,
        "bytes": [(1, 16, 2, 2), (1, 16, 2, 3), (4, 16, 4, 3), (8, 16, 4, 3), (16, 8, 4, 3), (8, 8, 4, 3),
                  (2, 32, 4, 3), (8, 32, 8, 3)],  # its autotune list
    }
    kernels = {"half2": (_int4_half2_gemv_kernel, lambda q, group: pack_half2_words(q)),
               "half2reduce": (_int4_half2_gemv_kernel, lambda q, group: pack_half2_words(q)),
               "bytes": (_int4_gemv_kernel, pack_nibbles)}
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
            next_copy, n_copies = cycled_copies((packed, s16), 200_000_000 if args.cold else 0)
            found = []
            for bn, bg, nw, ns in sweeps[layout]:
                blocks = {"BLOCK_N": bn, "BLOCK_G": bg}
                if layout.startswith("half2"):  # activations read as int32 pairs
                    blocks.update(ASM=_HALF2_DOT, GLU=False, PDL=False, SUM_PER_WORD=layout == "half2",
                                  EVEN=_whole_tiles(dict(N=n, K=k, GROUP=group, BLOCK_N=bn, BLOCK_G=bg)))

                def call():
                    w_copy, s_copy = next_copy()
                    xs, stride = (x.view(torch.int32), k // 2) if layout.startswith("half2") else (x, k)
                    call_args = (xs, w_copy, s_copy, y, n, k, stride, n)
                    kernel[(triton.cdiv(n, bn), 1)](*call_args, GROUP=group, **blocks, num_warps=nw, num_stages=ns)
                try:
                    call()
                    err = float((y.float() - ref).norm() / ref.norm())
                    ms = graph_ms(call, calls=max(20, n_copies))
                except Exception as e:  # noqa: BLE001
                    print(name, layout, (bn, bg, nw, ns), "failed", str(e)[:80])
                    continue
                found.append({"shape": name, "layout": layout, "config": [bn, bg, nw, ns], "us": ms * 1e3,
                              "GB/s": nbytes / ms / 1e6, "rel_error": err})
            found.sort(key=lambda r: -r["GB/s"])
            for r in found[:4]:
                print(f"  {layout:8s} {r['GB/s']:6.0f} GB/s {r['us']:7.1f} us {r['config']} err {r['rel_error']:.1e}")
            results += found
    write_json(args.json, results)


if __name__ == "__main__":
    sys.exit(run_main(main))
