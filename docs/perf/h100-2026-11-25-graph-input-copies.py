"""Feeding a decode graph its inputs (random 7B weights, H100): replay + synchronize loops (300 calls, two
rounds) with nothing before the replay, the two copy_ calls of GraphedModel (token and position), one of
them, fill_ from 0-d device tensors, one Triton kernel copying both, and the GraphedModel call itself.

    OUT=OUT_DIR python docs/perf/h100-2026-11-25-graph-input-copies.py
"""
import json
import os
import sys
import time

root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path[:0] = [root, os.path.join(root, "scripts")]
import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from benchmark import random_model  # noqa: E402
from selfspec.cuda_graphs import graph_models  # noqa: E402
from selfspec.quantize import make_draft  # noqa: E402

_inference = torch.inference_mode(); _inference.__enter__()
model = random_model("7b", 1024 + 128 + 9)
draft = make_draft(model)
mg, dg = graph_models(model, draft)
pos = 1100
buf = torch.zeros(10, dtype=torch.long, device="cuda")
offs = torch.arange(10, device="cuda") + pos
res = {}

@triton.jit
def _copy2(a_src, a_dst, b_src, b_dst, n, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK); m = i < n
    tl.store(a_dst + i, tl.load(a_src + i, mask=m), mask=m)
    tl.store(b_dst + i, tl.load(b_src + i, mask=m), mask=m)

def wall(f, n=300):
    for _ in range(10): f()
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(n): f()
    torch.cuda.synchronize(); return round((time.perf_counter() - t) / n * 1e3, 4)

for name, g in (("draft", dg), ("target", mg)):
    g(buf[:1].view(1, 1), offs[:1], pos + 1)
    e = next(v for (n, kv), v in g.graphs.items() if n == 1)
    tokens, positions = buf[3:4].view(1, 1), offs[3:4]
    def sync_after(f):
        def run():
            f(); e.graph.replay(); torch.cuda.synchronize()
        return run
    for rnd in range(2):
        res[f"{name}_{rnd}_bare"] = wall(sync_after(lambda: None))
        res[f"{name}_{rnd}_copy_both"] = wall(sync_after(lambda: (e.tokens.copy_(tokens), e.input_pos.copy_(positions))))
        res[f"{name}_{rnd}_copy_one"] = wall(sync_after(lambda: e.tokens.copy_(tokens)))
        res[f"{name}_{rnd}_fill_both"] = wall(sync_after(lambda: (e.tokens.fill_(tokens.view(())), e.input_pos.fill_(positions.view(())))))
        res[f"{name}_{rnd}_triton_copy2"] = wall(sync_after(lambda: _copy2[(1,)](tokens, e.tokens, positions, e.input_pos, 1, BLOCK=16)))
        res[f"{name}_{rnd}_call"] = wall(lambda: (g(tokens, positions, pos + 1), torch.cuda.synchronize()))
    print(name, {k: v for k, v in res.items() if k.startswith(name)}, flush=True)
json.dump(res, open(os.environ["OUT"] + "/copies.json", "w"), indent=1)
