"""FP16 GEMV at one row: cuBLAS (F.linear) against a plain Triton GEMV (float32 multiply-adds, one program per
BLOCK_N weight rows), 36 configurations, 7B shapes, weights cycled through copies (>= 300 MB) so that every
call reads DRAM; 20 calls per CUDA graph. Not kept in the engine: it rounds differently from the verify
pass's kernel (gemv_triton.py). JSON lines on stdout:

    python docs/perf/h100-2026-11-25-fp16-gemv-lab.py
"""
import json
import os
import sys

root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path[:0] = [root, os.path.join(root, "scripts")]
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from benchmark import cuda_ms  # noqa: E402

torch.set_grad_enabled(False)

@triton.jit
def gemv(x_ptr, w_ptr, y_ptr, N, K, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    cols = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + cols
        if EVEN_K:
            w = tl.load(w_ptr + rows[:, None] * K + k[None, :], mask=row_ok[:, None], other=0.0)
            x = tl.load(x_ptr + k)
        else:
            k_ok = k < K
            w = tl.load(w_ptr + rows[:, None] * K + k[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            x = tl.load(x_ptr + k, mask=k_ok, other=0.0)
        acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
    y = tl.sum(acc, axis=1)
    tl.store(y_ptr + rows, y.to(y_ptr.dtype.element_ty), mask=row_ok)

def cycled_ms(fns, calls=20):
    fns[0](); torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(calls):
            fns[i % len(fns)]()
    return cuda_ms(g.replay, iters=20) / calls

SHAPES = {"W_pack": (12288, 4096), "o_proj": (4096, 4096), "gate": (11008, 4096), "down": (4096, 11008),
          "lm_head": (125696, 4096)}
CONFIGS = [(bn, bk, w, s) for bn in (4, 8, 16) for bk in (256, 512, 1024) for w in (4, 8) for s in (2, 3)]
for name, (N, K) in SHAPES.items():
    nbytes = N * K * 2
    copies = max(2, -(-300_000_000 // nbytes))
    ws = [torch.randn(N, K, device="cuda", dtype=torch.float16) * 0.02 for _ in range(copies)]
    x = torch.randn(1, K, device="cuda", dtype=torch.float16)
    ys = [torch.empty(1, N, device="cuda", dtype=torch.float16) for _ in range(copies)]
    ref = F.linear(x, ws[0]).float()
    cub = cycled_ms([lambda w=w: F.linear(x, w) for w in ws])
    print(json.dumps({"shape": name, "N": N, "K": K, "impl": "cublas", "us": round(cub * 1e3, 2),
                      "gbs": round(nbytes / cub / 1e6)}), flush=True)
    results = []
    for bn, bk, wp, st in CONFIGS:
        def run(w, y, bn=bn, bk=bk, wp=wp, st=st):
            gemv[(triton.cdiv(N, bn),)](x, w, y, N, K, BLOCK_N=bn, BLOCK_K=bk, EVEN_K=K % bk == 0, num_warps=wp, num_stages=st)
        try:
            run(ws[0], ys[0])
            err = float((ys[0].float() - ref).abs().max() / ref.abs().max())
            ms = cycled_ms([lambda w=w, y=y: run(w, y) for w, y in zip(ws, ys)])
            results.append({"shape": name, "impl": "triton", "BLOCK_N": bn, "BLOCK_K": bk, "warps": wp, "stages": st,
                            "us": round(ms * 1e3, 2), "gbs": round(nbytes / ms / 1e6), "rel_err": err})
        except Exception as e:
            results.append({"shape": name, "impl": "triton", "BLOCK_N": bn, "BLOCK_K": bk, "warps": wp, "stages": st, "error": repr(e)[:100]})
    for r in sorted([r for r in results if "us" in r], key=lambda r: r["us"]):
        print(json.dumps(r), flush=True)
    del ws, ys
    torch.cuda.empty_cache()
