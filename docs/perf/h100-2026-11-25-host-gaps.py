"""What a graphed decode call costs beyond its GPU time (random 7B weights, H100; ran on the code with the
one-pass greedy pick, before it was committed). Per call, at position 1,100, median over 200 calls:
replay alone (GPU time from CUDA events; host time of `replay()`), replay + synchronize, the
GraphedModel call (input copies + replay) + synchronize, that + the greedy pick + reading the probability
back, and that with the position added on the device per call (as generate() did before).

    OUT=OUT_DIR python docs/perf/h100-2026-11-25-host-gaps.py
"""
import json
import os
import sys
import time

root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path[:0] = [root, os.path.join(root, "scripts")]
import torch  # noqa: E402
from benchmark import random_model  # noqa: E402
from selfspec.cuda_graphs import graph_models  # noqa: E402
from selfspec.generate import generate, greedy_pick  # noqa: E402
from selfspec.quantize import make_draft  # noqa: E402

out = os.environ["OUT"]
_inference = torch.inference_mode(); _inference.__enter__()
model = random_model("7b", 1024 + 128 + 9)
draft = make_draft(model)
mg, dg = graph_models(model, draft)
prompt = torch.randint(3, 125696, (1024,), generator=torch.Generator().manual_seed(1)).tolist()
for d in (None, dg):
    generate(mg, prompt, 64, draft=d)
res = {}
pos = 1100
tok = torch.zeros(1, 1, dtype=torch.long, device="cuda")
offs = torch.arange(10, device="cuda") + pos

def wall(f, n=200):
    for _ in range(5): f()
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(n): f()
    torch.cuda.synchronize(); return (time.perf_counter() - t) / n * 1e3

for name, g in (("target", mg), ("draft", dg)):
    g(tok, offs[:1], pos + 1)
    entry = next(e for (n, kv), e in g.graphs.items() if n == 1 and kv >= pos + 1)
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(50): entry.graph.replay()
    b.record(); torch.cuda.synchronize()
    res[f"{name}_replay_gpu_ms"] = a.elapsed_time(b) / 50
    def host_replay():
        t = time.perf_counter(); entry.graph.replay(); return time.perf_counter() - t
    host_replay(); torch.cuda.synchronize()
    hs = []
    for _ in range(50):
        hs.append(host_replay()); torch.cuda.synchronize()
    res[f"{name}_replay_host_ms"] = sorted(hs)[25] * 1e3
    res[f"{name}_replay_sync_wall_ms"] = wall(lambda: (entry.graph.replay(), torch.cuda.synchronize()))
    res[f"{name}_call_sync_wall_ms"] = wall(lambda: (g(tok, offs[:1], pos + 1), torch.cuda.synchronize()))
    res[f"{name}_call_pick_item_wall_ms"] = wall(lambda: float(greedy_pick(g(tok, offs[:1], pos + 1)[0, -1])[1]))
    res[f"{name}_call_pick_item_plusoffs_wall_ms"] = wall(lambda: float(greedy_pick(g(tok, offs[:1] + 0, pos + 1)[0, -1])[1]))
print(json.dumps(res, indent=1), flush=True)

json.dump(res, open(f"{out}/gaps.json", "w"), indent=1)
