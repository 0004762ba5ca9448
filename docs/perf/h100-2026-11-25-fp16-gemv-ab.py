"""The FP16 model's linears at decode sizes (1..16 tokens) through gemv_triton against cuBLAS, A/B in one process (random
weights, graphs re-captured per variant, three rounds): plain step, draft step and verify steps at position
1,088, and the graphed 1,024-token prefill (whose lm_head runs on the last token only); then 128 greedy
tokens of plain decoding with each, compared. JSON lines on stdout:

    python docs/perf/h100-2026-11-25-fp16-gemv-ab.py 7b   # or 13b
"""
import json
import os
import sys

root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path[:0] = [root, os.path.join(root, "scripts")]
import torch  # noqa: E402
from benchmark import copy_bandwidth_gbs, cuda_ms, random_model, step_costs  # noqa: E402
from selfspec import gemv_triton  # noqa: E402
from selfspec.cuda_graphs import graph_models  # noqa: E402
from selfspec.generate import generate  # noqa: E402
from selfspec.quantize import make_draft  # noqa: E402

torch.set_grad_enabled(False)
shape = sys.argv[1] if len(sys.argv) > 1 else "7b"
print(json.dumps({"device": torch.cuda.get_device_name(), "shape": shape, "copy_bandwidth_gbs": round(copy_bandwidth_gbs())}), flush=True)
model = random_model(shape, 1024 + 256)
draft = make_draft(model)
supported = gemv_triton.supported
prompt = torch.randint(0, 1000, (1024,), generator=torch.Generator().manual_seed(0)).tolist()
tok = torch.tensor([prompt], device="cuda")
pos = torch.arange(1024, device="cuda")
tokens = {}
for rnd in range(3):
    for variant in ("cublas", "triton_gemv"):
        gemv_triton.supported = supported if variant == "triton_gemv" else (lambda x, w: False)
        model_g, draft_g = graph_models(model, draft)
        costs = step_costs(model_g, draft_g, 1088, 8)
        prefill_ms = cuda_ms(lambda: model_g(tok, pos, 1024, last_only=True), iters=20)
        row = {"round": rnd, "variant": variant, "prefill_ms": round(prefill_ms, 2)}
        row.update({k: round(v, 4) for k, v in costs.items() if k in ("plain_step_ms", "draft_step_ms", "verify_2_ms", "verify_9_ms")})
        row["verify_9_over_plain"] = round(costs["verify_9_ms"] / costs["plain_step_ms"], 3)
        row["draft_over_plain"] = round(costs["draft_step_ms"] / costs["plain_step_ms"], 3)
        if rnd == 0:
            tokens[variant], _ = generate(model_g, prompt, 128)
        print(json.dumps(row), flush=True)
        del model_g, draft_g
gemv_triton.supported = supported
a, b = tokens["cublas"], tokens["triton_gemv"]
same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))
print(json.dumps({"greedy_tokens": len(a), "identical": a == b, "first_difference_at": same}), flush=True)
