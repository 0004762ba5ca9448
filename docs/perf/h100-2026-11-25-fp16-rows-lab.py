"""x @ W^T for a few rows of x (a verify pass: 9; a step: 1) in fp16: cuBLAS against Triton kernels that read
each weight tile once and multiply it with all rows on the tensor cores, x padded to 16 rows: "dot" is
tl.dot(x, w^T), "swapped" tl.dot(w, x^T) (gemv_triton.py keeps the swapped one). 7B shapes, weights cycled
through copies (>= 300 MB) so that every call reads DRAM; 20 calls per CUDA graph. JSON lines on stdout:

    python docs/perf/h100-2026-11-25-fp16-rows-lab.py           # both kernels, M = 9 and 1, with lm_head
    python docs/perf/h100-2026-11-25-fp16-rows-lab.py --first   # the first sweep: "dot" only, M = 9 and 2
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
FIRST = "--first" in sys.argv

@triton.jit
def gemm_swapped(x_ptr, w_ptr, y_ptr, M, N, K, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    m = tl.arange(0, BLOCK_M)
    m_ok = m < M
    cols = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + cols
        k_ok = k < K
        w = tl.load(w_ptr + rows[:, None] * K + k[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        x = tl.load(x_ptr + m[:, None] * K + k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        acc = tl.dot(w, tl.trans(x), acc)
    tl.store(y_ptr + m[None, :] * N + rows[:, None], acc.to(y_ptr.dtype.element_ty), mask=m_ok[None, :] & row_ok[:, None])

@triton.jit
def gemm_small_m(x_ptr, w_ptr, y_ptr, M, N, K, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    m = tl.arange(0, BLOCK_M)
    m_ok = m < M
    cols = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + cols
        k_ok = k < K
        w = tl.load(w_ptr + rows[:, None] * K + k[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        x = tl.load(x_ptr + m[:, None] * K + k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        acc = tl.dot(x, tl.trans(w), acc)
    tl.store(y_ptr + m[:, None] * N + rows[None, :], acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & row_ok[None, :])

def cycled_ms(fns, calls=20):
    fns[0](); torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(calls):
            fns[i % len(fns)]()
    return cuda_ms(g.replay, iters=20) / calls

SHAPES = {"W_pack": (12288, 4096), "o_proj": (4096, 4096), "gate": (11008, 4096), "down": (4096, 11008)}
if FIRST:
    CONFIGS = [("dot", bn, bk, w, s) for bn in (16, 32, 64) for bk in (128, 256, 512) for w in (4, 8) for s in (2, 3, 4)]
else:
    SHAPES["lm_head"] = (125696, 4096)
    CONFIGS = [(kern, bn, bk, 4, s) for kern in ("dot", "swapped") for bn in (32, 64, 128) for bk in (64, 128, 256)
               for s in (3, 4, 5)]
for name, (N, K) in SHAPES.items():
    nbytes = N * K * 2
    copies = max(2, -(-300_000_000 // nbytes))
    ws = [torch.randn(N, K, device="cuda", dtype=torch.float16) * 0.02 for _ in range(copies)]
    for M in ((9, 2) if FIRST else (9, 1)):
        x = torch.randn(M, K, device="cuda", dtype=torch.float16)
        ys = [torch.empty(M, N, device="cuda", dtype=torch.float16) for _ in range(copies)]
        ref = F.linear(x, ws[0]).float()
        cub = cycled_ms([lambda w=w: F.linear(x, w) for w in ws])
        cub1 = cycled_ms([lambda w=w: F.linear(x[:1], w) for w in ws])
        print(json.dumps({"shape": name, "M": M, "impl": "cublas", "us": round(cub * 1e3, 2), "gbs": round(nbytes / cub / 1e6),
                          "cublas_m1_us": round(cub1 * 1e3, 2)}), flush=True)
        results = []
        for kern, bn, bk, wp, st in CONFIGS:
            def run(w, y, bn=bn, bk=bk, wp=wp, st=st, kern=kern):
                (gemm_small_m if kern == "dot" else gemm_swapped)[(triton.cdiv(N, bn),)](x, w, y, M, N, K, BLOCK_M=16, BLOCK_N=bn, BLOCK_K=bk, num_warps=wp, num_stages=st)
            try:
                run(ws[0], ys[0])
                err = float((ys[0].float() - ref).abs().max() / ref.abs().max())
                ms = cycled_ms([lambda w=w, y=y: run(w, y) for w, y in zip(ws, ys)])
                results.append({"shape": name, "M": M, "impl": kern, "BLOCK_N": bn, "BLOCK_K": bk, "warps": wp, "stages": st,
                                "us": round(ms * 1e3, 2), "gbs": round(nbytes / ms / 1e6), "rel_err": err})
            except Exception as e:
                results.append({"shape": name, "M": M, "impl": kern, "BLOCK_N": bn, "BLOCK_K": bk, "warps": wp, "stages": st, "error": repr(e)[:100]})
        for kern in (("dot",) if FIRST else ("dot", "swapped")):
            for r in sorted([r for r in results if "us" in r and r["impl"] == kern], key=lambda r: r["us"])[:6 if FIRST else 3]:
                print(json.dumps(r), flush=True)
        errs = [r for r in results if "error" in r]
        if errs: print(json.dumps({"errors": len(errs)}), flush=True)
    del ws
    torch.cuda.empty_cache()
