"""ALiBi prefill attention on an H100: at the 13B shape (1,024 tokens, 40 heads, head_dim 128, fp16) SDPA with
the bias as a mask, SDPA's causal kernel without ALiBi (for scale), and attention_triton's prefill kernel
per block configuration; then the graphed 1,024-token prefill of the 13B and 7B shapes with the kernel and
with SDPA + mask (`use_attention_kernels`), three rounds. JSON lines on stdout:

    python docs/perf/h100-2026-11-25-alibi-prefill-ab.py
"""
import json
import os
import sys

root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path[:0] = [root, os.path.join(root, "scripts")]
import torch  # noqa: E402
import triton  # noqa: E402
from benchmark import cuda_ms, random_model  # noqa: E402
from selfspec import attention_triton  # noqa: E402
from selfspec.cuda_graphs import graph_models  # noqa: E402
from selfspec.model import alibi_slopes  # noqa: E402
torch.set_grad_enabled(False)

# kernel config sweep at the 13B attention shape
T, H, D = 1024, 40, 128
q = torch.randn(T, H, D, device="cuda", dtype=torch.float16)
kc, vc = torch.randn(2, 1, H, 1280, D, device="cuda", dtype=torch.float16)
pos = torch.arange(T, device="cuda")
slopes = alibi_slopes(H).cuda()
ref = attention_triton.prefill_attention(q, kc, vc, pos, slopes)
qs = q.transpose(0, 1)[None]
offset = torch.arange(T, device="cuda")[None, :] - pos[:, None]
bias = (slopes[:, None, None] * offset.float()).masked_fill(offset > 0, float("-inf")).half()[None]
sdpa = lambda: torch.nn.functional.scaled_dot_product_attention(qs, kc[:, :, :T], vc[:, :, :T], attn_mask=bias)  # noqa: E731
print(json.dumps({"op": "sdpa+mask 13b layer", "us": round(cuda_ms(sdpa, iters=50) * 1e3, 1),
                  "max_abs_diff_vs_kernel": float((sdpa()[0].transpose(0, 1).reshape(T, H * D) - ref).abs().max())}), flush=True)
causal = lambda: torch.nn.functional.scaled_dot_product_attention(qs, kc[:, :, :T], vc[:, :, :T], is_causal=True)  # noqa: E731
print(json.dumps({"op": "sdpa causal (no alibi) 13b layer", "us": round(cuda_ms(causal, iters=50) * 1e3, 1)}), flush=True)
y = torch.empty(T, H * D, device="cuda", dtype=torch.float16)
kernel = attention_triton._prefill_attention_kernel
for bm, bn, w, st in ((64, 64, 4, 2), (64, 64, 4, 3), (64, 32, 4, 3), (64, 128, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3)):
    def run():
        kernel[(triton.cdiv(T, bm), H)](
            q, kc, vc, pos, slopes, y, T, 1280, D ** -0.5, HEADS=H, KV_HEADS=H, HEAD_DIM=D, BLOCK_M=bm,
            BLOCK_N=bn, ALIBI=True, IEEE=False, PDL=False, num_warps=w, num_stages=st)
    try:
        run()
        ok = bool(torch.allclose(y, ref, atol=2e-3, rtol=2e-3))
        us = round(cuda_ms(run, iters=50) * 1e3, 1)
        print(json.dumps({"BLOCK_M": bm, "BLOCK_N": bn, "warps": w, "stages": st, "us": us, "ok": ok}), flush=True)
    except Exception as e:  # noqa: BLE001 - a configuration this GPU cannot run
        print(json.dumps({"BLOCK_M": bm, "BLOCK_N": bn, "warps": w, "stages": st, "error": repr(e)[:150]}), flush=True)

for shape in ("13b", "7b"):
    model = random_model(shape, 1024 + 256)
    tok = torch.randint(0, 1000, (1, 1024), device="cuda")
    p = torch.arange(1024, device="cuda")
    logits = {}
    for rnd in range(3):
        for kernels in (False, True):
            model.use_attention_kernels = kernels
            g, _ = graph_models(model)
            ms = cuda_ms(lambda: g(tok, p, 1024, last_only=True), iters=20)
            logits[kernels] = g(tok, p, 1024, last_only=True).float().clone()
            print(json.dumps({"shape": shape, "round": rnd, "prefill_kernel": kernels, "graphed_prefill_ms": round(ms, 2)}), flush=True)
            del g
    print(json.dumps({"shape": shape, "logits_max_abs_diff": float((logits[True] - logits[False]).abs().max()),
                      "argmax_equal": bool(torch.equal(logits[True].argmax(-1), logits[False].argmax(-1)))}), flush=True)
    del model
    torch.cuda.empty_cache()
