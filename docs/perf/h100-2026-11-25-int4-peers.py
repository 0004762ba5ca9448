"""INT4 GEMV at M=1 on the 7B shapes: this engine's kernel side by side with two packages from PyPI,
gemlite (Triton kernels, fp16 activations; GEMV_REVSPLITK is its batch-1 kernel) and torchao
(Int4WeightOnlyConfig: tile_packed_to_4d, which is torch's tinygemm, and its default "plain" layout), and
cuBLAS on the 16-bit weight. gemlite gets the engine's own INT4 values and scales (zero point 8); torchao
quantizes the weight itself. Warm: back-to-back calls on one matrix; cold: calls cycle through copies
(>= 300 MB in all) so that weights come from DRAM, as in a decode step. JSON lines on stdout:

    pip install gemlite==0.6.0.post2 torchao==0.18.0   # --no-deps: both only need torch, triton, numpy
    python docs/perf/h100-2026-11-25-int4-peers.py > OUT.jsonl
"""
import json
import math
import os
import sys

root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path[:0] = [root, os.path.join(root, "scripts")]
import torch  # noqa: E402
from benchmark import cuda_ms  # noqa: E402
from selfspec.quantize import Int4Linear, dequantize_int4, quantize_int4  # noqa: E402

torch.set_grad_enabled(False)
SHAPES = {"W_pack": (12288, 4096), "o_proj": (4096, 4096), "gate_up": (22016, 4096), "down": (4096, 11008),
          "lm_head": (125696, 4096)}
G = 64
info = {"torch": torch.__version__}
try:
    import gemlite
    from gemlite import DType, GemLiteLinearTriton

    gemlite.set_autotune("fast")
    info["gemlite"] = getattr(gemlite, "__version__", "?")
except Exception as e:  # noqa: BLE001
    gemlite = None
    info["gemlite_error"] = repr(e)[:300]
try:
    import torchao
    from torchao.quantization import Int4WeightOnlyConfig, quantize_
    info["torchao"] = torchao.__version__
except Exception as e:  # noqa: BLE001
    torchao = None
    info["torchao_error"] = repr(e)[:300]
print(json.dumps(info), flush=True)


def timed(calls, reps=4):
    """ms per call of `calls` (callables) replayed in order as one graph, `reps` times over."""
    for c in calls:
        c()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            for c in calls:
                c()
    return cuda_ms(graph.replay, iters=15) / (reps * len(calls))


for name, (n, k) in SHAPES.items():
    gen = torch.Generator("cuda").manual_seed(0)
    w = (torch.randn(n, k, device="cuda", generator=gen) * k ** -0.5).half()
    x = torch.randn(1, k, device="cuda", generator=gen).half()
    q, scales = quantize_int4(w, G)
    ref = x.float() @ dequantize_int4(q, scales).T
    int4_bytes = n * k // 2 + n * (k // G) * 2
    copies = max(1, math.ceil(300e6 / int4_bytes))

    def ours():
        lin = Int4Linear(w, G)
        return lambda: lin(x)

    def gemlite_revsplitk():
        lin = GemLiteLinearTriton(4, group_size=G, in_features=k, out_features=n, input_dtype=DType.FP16,
                                  output_dtype=DType.FP16)
        lin.pack((q.to(torch.int16) + 8).to(torch.uint8), scales.half(), 8, None)
        return lambda: lin(x)

    def torchao_tile_packed():
        lin = torch.nn.Linear(k, n, bias=False, device="cuda", dtype=torch.bfloat16)
        lin.weight.data.copy_(w)
        quantize_(lin, Int4WeightOnlyConfig(group_size=G, int4_packing_format="tile_packed_to_4d",
                                            set_inductor_config=False))
        xb = x.bfloat16()
        return lambda: lin(xb)

    def torchao_plain():
        lin = torch.nn.Linear(k, n, bias=False, device="cuda", dtype=torch.bfloat16)
        lin.weight.data.copy_(w)
        quantize_(lin, Int4WeightOnlyConfig(group_size=G, set_inductor_config=False))
        xb = x.bfloat16()
        return lambda: lin(xb)

    def cublas():
        ww = w.clone()
        return lambda: torch.nn.functional.linear(x, ww)

    candidates = {"selfspec f16x2 (fp16)": (ours, int4_bytes, True), "cuBLAS fp16 (16-bit weights)": (cublas, 2 * n * k, False)}
    if gemlite is not None:
        candidates["gemlite GEMV_REVSPLITK (fp16)"] = (gemlite_revsplitk, int4_bytes, True)
    if torchao is not None:
        candidates["torchao tile_packed_to_4d = tinygemm (bf16)"] = (torchao_tile_packed, int4_bytes, False)
        candidates["torchao plain (default, bf16)"] = (torchao_plain, int4_bytes, False)
    for kernel, (make, nbytes, same_q) in candidates.items():
        row = {"linear": name, "shape": [n, k], "kernel": kernel}
        try:
            fn = make()
            out = fn().float()
            row["rel_error_vs_our_dequantized"] = float((out - ref).norm() / ref.norm())
            row["warm_us"] = round(timed([fn] * 5) * 1e3, 2)
            nc = copies if nbytes == int4_bytes else max(1, math.ceil(300e6 / nbytes))
            fns = [fn] + [make() for _ in range(nc - 1)]
            row["cold_us"] = round(timed(fns, reps=max(1, 20 // nc)) * 1e3, 2)
            row["cold_GBps"] = round(nbytes / (row["cold_us"] * 1e-6) / 1e9)
            row["copies"] = nc
            del fns, fn
        except Exception as e:  # noqa: BLE001
            row["error"] = repr(e)[:300]
        print(json.dumps(row), flush=True)
        torch.cuda.empty_cache()
