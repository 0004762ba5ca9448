"""Plain step, draft step and verify-9 step on the CPU for a 7B-shaped checkpoint (bfloat16, the CLI's CPU
default); the draft quantized without the clipping search (same kernel, same bytes, quicker to build).

    python docs/perf/cpu-2026-11-25-7b-shape-steps.py CKPT
"""
import json
import sys
import time
from pathlib import Path
import torch
ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT)]
from selfspec.checkpoint import load_checkpoint
from selfspec.quantize import make_draft

t = time.perf_counter()
ckpt, model, tok = load_checkpoint(sys.argv[1], torch.bfloat16, torch.device("cpu"), max_seq_len=1024)
res = {"threads": torch.get_num_threads(), "load_s": round(time.perf_counter() - t, 1)}
t = time.perf_counter()
draft = make_draft(model, clip_ratios=(1.0,))
res["make_draft_no_clip_search_s"] = round(time.perf_counter() - t, 1)
res["int4_kernels"] = sorted({m.kernel for m in draft.modules() if hasattr(m, "kernel")})
with torch.inference_mode():
    model(torch.arange(64)[None], torch.arange(64))  # a 64-token prefix in the cache

    def step_s(module, n):
        tokens, pos = torch.full((1, n), 5), torch.arange(64, 64 + n)
        module(tokens, pos)
        times = []
        for _ in range(3):
            t = time.perf_counter(); module(tokens, pos); times.append(time.perf_counter() - t)
        return round(sorted(times)[1], 3)

    res["plain_step_s"] = step_s(model, 1)
    res["draft_step_s"] = step_s(draft, 1)
    res["verify9_s"] = step_s(model, 9)
res["draft_over_plain"] = round(res["draft_step_s"] / res["plain_step_s"], 2)
res["verify9_over_plain"] = round(res["verify9_s"] / res["plain_step_s"], 2)
print(json.dumps(res))
