"""Sweep block configurations of the Triton INT4 GEMV at M=1 on Baichuan2 shapes.

    python scripts/int4_kernel_lab.py            # prints GB/s per shape and config, best first

Times are CUDA-graph replays of 20 back-to-back calls (no launch gaps), median of 20 replays.
"""
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark import graph_ms  # noqa: E402
from selfspec.int4_triton import _int4_gemv_kernel  # noqa: E402
from selfspec.quantize import dequantize_int4, pack_nibbles, quantize_int4  # noqa: E402


def main():
    shapes = {"o_proj": (4096, 4096), "W_pack": (12288, 4096), "gate": (11008, 4096), "down": (4096, 11008),
              "lm_head": (125696, 4096)}
    group = 64
    configs = [(bn, bg, w, s) for bn in (1, 2, 4, 8) for bg in (8, 16, 32) for w in (2, 4, 8) for s in (2, 3, 4)]
    summary = {}
    for name, (n, k) in shapes.items():
        w = torch.randn(n, k, device="cuda", dtype=torch.float16)
        q, scales = quantize_int4(w, group)
        packed, s16 = pack_nibbles(q, group), scales.half()
        x = torch.randn(1, k, device="cuda", dtype=torch.float16)
        ref = x.float() @ dequantize_int4(q, scales).T
        y = torch.empty(1, n, device="cuda", dtype=torch.float16)
        nbytes = packed.numel() + s16.numel() * 2
        fp16_ms = graph_ms(lambda: torch.nn.functional.linear(x, w))
        results = []
        for kernel_name, kernel in (("current", _int4_gemv_kernel),):
            for bn, bg, nw, ns in configs:
                grid = (triton.cdiv(n, bn), 1)
                call = lambda: kernel[grid](x, packed, s16, y, n, k, k, n, GROUP=group, BLOCK_N=bn,  # noqa: E731
                                            BLOCK_G=bg, num_warps=nw, num_stages=ns)
                try:
                    call()
                    err = float((y.float() - ref).norm() / ref.norm())
                    ms = graph_ms(call)
                except Exception as e:  # noqa: BLE001
                    print(name, kernel_name, (bn, bg, nw, ns), "failed", str(e)[:80])
                    continue
                results.append((nbytes / ms / 1e6, kernel_name, (bn, bg, nw, ns), ms, err))
        results.sort(reverse=True)
        print(f"\n{name} {n}x{k}: fp16 F.linear {fp16_ms * 1e3:.1f} us = {2 * n * k / fp16_ms / 1e6:.0f} GB/s; int4 best:")
        for gbs, kn, cfg, ms, err in results[:6]:
            print(f"  {gbs:6.0f} GB/s {ms * 1e3:7.1f} us  {kn:8s} {cfg} err {err:.1e}")
        summary[name] = results[0]
    print("\nbest per shape:", {k: (round(v[0]), v[1], v[2]) for k, v in summary.items()})


if __name__ == "__main__":
    main()
