"""The CUDA C++ INT4 GEMV (selfspec/accel/int4_cuda.py) against the Triton half2 kernel, at batch 1, on the draft's shapes.

    python bench/int4_cuda_lab.py --out DIR    # writes DIR/int4_cuda_lab.json and prints a table

1. Correctness: for the four INT4 matrices of a Baichuan2-7B and of a 13B layer (gate/up as one GLU matrix),
   group sizes 64 and 128, random weights: the CUDA kernel, its PDL launch and the Triton kernel against a
   float32 product of the dequantised weights. A relative error norm above TOLERANCE (f16x2 sums of four
   products per word, float32 beyond, fp16 output) exits with status 1 after the report is written.
2. Each shape COLD: CUDA graphs of back-to-back calls cycling through copies of the weights (more than three
   times the 60 MB L2 of an H200 in all), so every call reads DRAM as in a decode step; microseconds per call
   and GB/s of weights and scales, for the CUDA kernel (default tiling, with PDL, and the best of a few
   tilings) and for Triton (autotuned as in use).
3. One chained draft-step-like sequence per model (32 layers for 7B, 40 for 13B, distinct weights): W_pack,
   o_proj plus the residual, gate/up with SiLU, down plus the residual, captured in a CUDA graph; CUDA with
   PDL (residual added in the kernel), CUDA without PDL, Triton with and without PDL (residual added by torch).
   Then the same with the layer's two RMS norms, as the draft runs them (CUDA kernels, PDL): in the GEMVs'
   prologue with the residual in their epilogue (accel/fused_draft.py), against separate add + norm kernels
   (pointwise.add_rms_norm) before GEMVs without the residual (accel/transformer.py).
Needs a CUDA GPU, Triton and cuda-python; about a minute on an H200.
"""
import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from selfspec.accel import int4 as int4_triton, int4_cuda, launch, pointwise  # noqa: E402
from selfspec.errors import InputError, one_line_usage_errors, run_main  # noqa: E402
from selfspec.accel.int4_cuda import Tiling  # noqa: E402

TOLERANCE = 2e-3
STEP_TOLERANCE = 2e-2  # norm prologue against norm kernels, after a whole step's chain of fp16 roundings
L2_BYTES = 60e6
EPS = 1e-6
MODELS = {  # name: (layers, [(name, N, K, glu)]) of Baichuan2's decoder layers, gate/up interleaved
    "7b": (32, [("W_pack", 12288, 4096, False), ("o_proj", 4096, 4096, False), ("gate_up", 22016, 4096, True),
                ("down", 4096, 11008, False)]),
    "13b": (40, [("W_pack", 15360, 5120, False), ("o_proj", 5120, 5120, False), ("gate_up", 27392, 5120, True),
                 ("down", 5120, 13696, False)]),
}
TILINGS = [Tiling(rows=2, unroll=4, warps=4), Tiling(rows=4, unroll=4, warps=4), Tiling(rows=2, unroll=8, warps=4),
           Tiling(rows=4, unroll=2, warps=4), Tiling(rows=2, unroll=4, warps=8), Tiling(rows=1, unroll=8, warps=4),
           Tiling(rows=4, unroll=4, warps=2), Tiling(rows=1, unroll=12, warps=4), Tiling(rows=2, unroll=6, warps=4),
           Tiling(rows=2, unroll=4, warps=4, l2_prefetch=True), Tiling(rows=4, unroll=4, warps=4, l2_prefetch=True)]


def random_weights(n, k, group, gain=1.0):
    """Random nibbles and one scale per group that gives the product about `gain` times the input's size."""
    words = torch.randint(-2**31, 2**31 - 1, (n, k // 8), dtype=torch.int32, device="cuda")
    scale = gain / (4.6 * math.sqrt(k))  # nibbles - 8 have a standard deviation of about 4.6
    scales = (torch.rand(n, k // group, device="cuda") * scale + scale / 2).half()
    return words, scales


def unpack_half2_words(words):
    """int32 words [N, K/8] -> int8 [N, K] in [-8, 7] (quantize.pack_half2_words' layout, undone)."""
    shifts = torch.tensor([[4 * j, 16 + 4 * j] for j in range(4)], device=words.device)
    nibbles = (words[:, :, None, None] >> shifts) & 0xF
    return (nibbles.to(torch.int8) - 8).view(words.shape[0], -1)


def reference(x, words, scales, group, glu):
    w = unpack_half2_words(words).float().view(words.shape[0], -1, group) * scales.float()[..., None]
    y = x.float() @ w.view(words.shape[0], -1).T
    return torch.nn.functional.silu(y[..., 0::2]) * y[..., 1::2] if glu else y


def relative_error(y, ref) -> float:
    return float((y.float() - ref).norm() / ref.norm())


def triton_gemv(x, words, scales, group, glu=False, pdl=False):
    launch.enabled = pdl
    return int4_triton.int4_matmul_half2(x, words, scales, group, glu=glu)


def graph_us(calls, replays=20) -> float:
    """Median microseconds of one replay of a CUDA graph of `calls` (a function that launches them)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        calls()  # warm-up: compiles, autotunes, allocates outside capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        calls()
    graph.replay()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000)
    return sorted(times)[len(times) // 2]


def check_shape(n, k, group, glu) -> dict:
    words, scales = random_weights(n, k, group)
    x = torch.randn(1, k, device="cuda", dtype=torch.float16)
    ref = reference(x, words, scales, group, glu)
    errors = {"cuda": relative_error(int4_cuda.int4_gemv(x, words, scales, group, glu=glu), ref),
              "cuda_pdl": relative_error(int4_cuda.int4_gemv(x, words, scales, group, glu=glu, pdl=True), ref),
              "triton": relative_error(triton_gemv(x, words, scales, group, glu), ref)}
    for tiling in TILINGS:
        if not glu or tiling.rows % 2 == 0:
            y = int4_cuda.int4_gemv(x, words, scales, group, glu=glu, tiling=tiling)
            errors["cuda_worst_tiling"] = max(errors.get("cuda_worst_tiling", 0.0), relative_error(y, ref))
    return errors


def time_shape(n, k, group, glu) -> dict:
    """Cold microseconds per call for each kernel, calls cycling through enough copies to miss L2."""
    weight_bytes = n * k // 2 + n * (k // group) * 2
    copies = max(2, math.ceil(3 * L2_BYTES / weight_bytes))
    calls = copies * math.ceil(48 / copies)
    weights = [random_weights(n, k, group) for _ in range(copies)]
    x = torch.randn(1, k, device="cuda", dtype=torch.float16)
    out = torch.empty(1, n // 2 if glu else n, device="cuda", dtype=torch.float16)

    def run(kernel):
        return graph_us(lambda: [kernel(*weights[i % copies]) for i in range(calls)]) / calls

    def cuda(tiling=None, pdl=False):
        return run(lambda w, s: int4_cuda.int4_gemv(x, w, s, group, glu=glu, out=out, pdl=pdl, tiling=tiling))

    us = {"cuda": cuda(), "cuda_pdl": cuda(pdl=True), "triton": run(lambda w, s: triton_gemv(x, w, s, group, glu))}
    tilings = {str(t): cuda(t) for t in TILINGS if not glu or t.rows % 2 == 0}
    best = min(tilings, key=tilings.get)
    us["cuda_best_tiling"] = tilings[best]
    return {"us": us, "GB/s": {key: weight_bytes / (t * 1e3) for key, t in us.items()}, "best_tiling": best,
            "tilings_us": tilings, "weight_bytes": weight_bytes, "copies": copies}


def time_step(model) -> dict:
    """One graph of a whole draft-step-like chain; each GEMV's input is the output of the one before."""
    layers, shapes = MODELS[model]
    hidden = shapes[1][1]
    group = 128
    weights = [[random_weights(n, k, group, gain=0.1) for _, n, k, _ in shapes] for _ in range(layers)]
    h0 = torch.randn(1, hidden, device="cuda", dtype=torch.float16)
    weight_bytes = sum(w.numel() * 4 + s.numel() * 2 for layer in weights for w, s in layer)

    def cuda_step(pdl):
        h = h0
        for (w_pack, s_pack), (w_o, s_o), (w_gu, s_gu), (w_d, s_d) in weights:
            qkv = int4_cuda.int4_gemv(h, w_pack, s_pack, group, pdl=pdl)
            h = int4_cuda.int4_gemv(qkv[:, :hidden], w_o, s_o, group, pdl=pdl, residual=h)  # as if attention
            act = int4_cuda.int4_gemv(h, w_gu, s_gu, group, glu=True, pdl=pdl)
            h = int4_cuda.int4_gemv(act, w_d, s_d, group, pdl=pdl, residual=h)
        return h

    def triton_step(pdl):
        h = h0
        for (w_pack, s_pack), (w_o, s_o), (w_gu, s_gu), (w_d, s_d) in weights:
            qkv = triton_gemv(h, w_pack, s_pack, group, pdl=pdl)
            h = h + triton_gemv(qkv[:, :hidden], w_o, s_o, group, pdl=pdl)
            act = triton_gemv(h, w_gu, s_gu, group, glu=True, pdl=pdl)
            h = h + triton_gemv(act, w_d, s_d, group, pdl=pdl)
        return h

    norms = [[(1 + 0.1 * torch.randn(hidden, device="cuda")).half() for _ in range(2)] for _ in range(layers)]

    def norm_prologue_step(pdl):
        launch.enabled = pdl
        h = h0
        for ((w_pack, s_pack), (w_o, s_o), (w_gu, s_gu), (w_d, s_d)), (n_in, n_post) in zip(weights, norms):
            qkv = int4_cuda.int4_gemv(h, w_pack, s_pack, group, pdl=pdl, norm_weight=n_in, norm_eps=EPS)
            h = int4_cuda.int4_gemv(qkv[:, :hidden], w_o, s_o, group, pdl=pdl, residual=h)
            act = int4_cuda.int4_gemv(h, w_gu, s_gu, group, glu=True, pdl=pdl, norm_weight=n_post, norm_eps=EPS)
            h = int4_cuda.int4_gemv(act, w_d, s_d, group, pdl=pdl, residual=h)
        return h

    def norm_kernels_step(pdl):
        launch.enabled = pdl
        h, delta = h0, None
        for ((w_pack, s_pack), (w_o, s_o), (w_gu, s_gu), (w_d, s_d)), (n_in, n_post) in zip(weights, norms):
            if delta is None:
                normed = pointwise.rms_norm(h, n_in, EPS)
            else:
                h, normed = pointwise.add_rms_norm(h, delta, n_in, EPS)
            qkv = int4_cuda.int4_gemv(normed, w_pack, s_pack, group, pdl=pdl)
            h, normed = pointwise.add_rms_norm(h, int4_cuda.int4_gemv(qkv[:, :hidden], w_o, s_o, group, pdl=pdl),
                                               n_post, EPS)
            delta = int4_cuda.int4_gemv(int4_cuda.int4_gemv(normed, w_gu, s_gu, group, glu=True, pdl=pdl),
                                        w_d, s_d, group, pdl=pdl)
        return h + delta

    results = {"cuda_pdl": cuda_step(True), "cuda": cuda_step(False), "triton": triton_step(False),
               "norm_prologue_pdl": norm_prologue_step(True), "norm_prologue": norm_prologue_step(False),
               "norm_kernels_pdl": norm_kernels_step(True)}
    us = {"cuda_pdl": graph_us(lambda: cuda_step(True), replays=10), "cuda": graph_us(lambda: cuda_step(False), 10),
          "triton_pdl": graph_us(lambda: triton_step(True), 10), "triton": graph_us(lambda: triton_step(False), 10),
          "norm_prologue_pdl": graph_us(lambda: norm_prologue_step(True), 10),
          "norm_kernels_pdl": graph_us(lambda: norm_kernels_step(True), 10)}
    launch.enabled = False
    return {"layers": layers, "group": group, "weight_bytes": weight_bytes, "us": us,
            "GB/s": {key: weight_bytes / (t * 1e3) for key, t in us.items()},
            "pdl_output_equal": bool(torch.equal(results["cuda_pdl"], results["cuda"])
                                     and torch.equal(results["norm_prologue_pdl"], results["norm_prologue"])),
            "cuda_vs_triton_error": relative_error(results["cuda"], results["triton"].float()),
            "norm_prologue_vs_kernels_error": relative_error(results["norm_prologue_pdl"],
                                                             results["norm_kernels_pdl"].float())}


def main() -> int:
    parser = one_line_usage_errors(argparse.ArgumentParser(description=__doc__,
                                                           formatter_class=argparse.RawDescriptionHelpFormatter))
    parser.add_argument("--out", required=True, type=Path, help="folder for int4_cuda_lab.json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise InputError("the INT4 CUDA lab needs a CUDA GPU")
    if not int4_cuda.available(torch.device("cuda")) or not int4_triton.available(torch.device("cuda")):
        raise InputError(f"the INT4 CUDA lab needs Triton and the CUDA kernel: {int4_cuda.unavailable_reason}")
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "tolerance": TOLERANCE,
              "nvrtc": ".".join(map(str, int4_cuda.nvrtc_version())), "default_tiling": str(int4_cuda.default_tiling(4096, 4096)),
              "shapes": [], "steps": {}}
    failed = []
    print(f"{'model':5} {'matrix':8} {'group':>5} {'cuda us':>8} {'pdl us':>7} {'best us':>8} {'triton us':>9} "
          f"{'cuda GB/s':>9} {'triton GB/s':>11} {'max error':>9}  best tiling")
    for model, (_, shapes) in MODELS.items():
        for name, n, k, glu in shapes:
            for group in (64, 128):
                errors = check_shape(n, k, group, glu)
                timing = time_shape(n, k, group, glu)
                report["shapes"].append(dict(model=model, matrix=name, n=n, k=k, glu=glu, group=group,
                                             errors=errors, **timing))
                worst = max(errors.values())
                if worst > TOLERANCE:
                    failed.append(f"{model} {name} group {group}: error {worst:.2e}")
                us, gbs = timing["us"], timing["GB/s"]
                print(f"{model:5} {name:8} {group:5} {us['cuda']:8.2f} {us['cuda_pdl']:7.2f} "
                      f"{us['cuda_best_tiling']:8.2f} {us['triton']:9.2f} {gbs['cuda']:9.0f} {gbs['triton']:11.0f} "
                      f"{worst:9.2e}  {timing['best_tiling']}", flush=True)
    for model in MODELS:
        step = time_step(model)
        report["steps"][model] = step
        print(f"{model} step, {step['layers']} layers x 4 GEMVs in one graph: "
              + ", ".join(f"{key} {t:.0f} us ({step['GB/s'][key]:.0f} GB/s)" for key, t in step["us"].items())
              + f"; PDL output identical: {step['pdl_output_equal']}", flush=True)
        print(f"{model} step, norm prologue against norm kernels: relative error "
              f"{step['norm_prologue_vs_kernels_error']:.2e}", flush=True)
        if not step["pdl_output_equal"]:
            failed.append(f"{model} step: the PDL chain's output differs from the chain without PDL")
        if step["norm_prologue_vs_kernels_error"] > STEP_TOLERANCE:
            failed.append(f"{model} step: the norm prologue's output differs from the norm kernels' "
                          f"({step['norm_prologue_vs_kernels_error']:.2e})")
    report["failed"] = failed
    (args.out / "int4_cuda_lab.json").write_text(json.dumps(report, indent=1))
    for line in failed:
        print("MISMATCH " + line, file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run_main(main))
