"""GPU and wall time of the sampling pieces over 125,696 float16 logits on an H100 (ran on commit 48add4d):
Sampling.probs with the hub's settings (temperature 0.3, top-k 5, top-p 0.85), torch.topk / sort / max,
a two-stage top-k (top-k per chunk, then over the chunks' winners) and probs built from it, multinomial
over a dense distribution, speculative_accept for 8 drafts, and the draft's greedy softmax + max.
Back-to-back eager calls, so the GPU times include waiting for the host where it launches slower.

    OUT=OUT_DIR python docs/perf/h100-2026-11-25-sampling-micro.py
"""
import json
import os
import sys
import time

root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, root)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from selfspec.generate import Sampling, speculative_accept  # noqa: E402

V = 125696
dev = "cuda"
res = {}

def t(name, fn, n=100):
    for _ in range(5): fn()
    torch.cuda.synchronize(); s = time.perf_counter()
    for _ in range(n): fn()
    torch.cuda.synchronize(); wall = (time.perf_counter() - s) / n * 1e3
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(n): fn()
    b.record(); torch.cuda.synchronize()
    res[name] = [round(wall, 4), round(a.elapsed_time(b) / n, 4)]
    print(name, res[name], flush=True)

def topk2(x, k, chunk):
    n = -(-x.shape[-1] // chunk)
    xp = F.pad(x, (0, n * chunk - x.shape[-1]), value=float("-inf"))
    cv, ci = torch.topk(xp.view(*x.shape[:-1], n, chunk), k)
    ci = ci + torch.arange(n, device=x.device)[:, None] * chunk
    fv, fi = torch.topk(cv.flatten(-2), k)
    return fv, ci.flatten(-2).gather(-1, fi)

def probs_new(logits, T, k, p, chunk=None):
    logits = logits.float() / T
    vals, idx = topk2(logits, k, chunk) if chunk else torch.topk(logits, k)
    pk = vals.softmax(-1)
    if p < 1:
        drop = (pk.cumsum(-1) - pk) > p
        pk = vals.masked_fill(drop, float("-inf")).softmax(-1)
    return torch.zeros_like(logits).scatter_(-1, idx, pk)

hub = Sampling(True, 0.3, 5, 0.85)
for rows in (1, 9):
    x = torch.randn(rows, V, device=dev, dtype=torch.float16) * 3
    xf = x.float()
    t(f"old_hub_{rows}", lambda: hub.probs(x))
    t(f"topk_fp32_{rows}", lambda: torch.topk(xf, 5))
    t(f"topk_fp16_{rows}", lambda: torch.topk(x, 5))
    t(f"sort_fp32_{rows}", lambda: torch.sort(xf, descending=True))
    t(f"max_fp32_{rows}", lambda: xf.max(-1))
    for c in (256, 512, 1024, 2048):
        t(f"topk2_{c}_{rows}", lambda: topk2(xf, 5, c))
    t(f"new_direct_{rows}", lambda: probs_new(x, 0.3, 5, 0.85))
    for c in (512, 1024):
        t(f"new_two_stage_{c}_{rows}", lambda: probs_new(x, 0.3, 5, 0.85, c))
    ref = hub.probs(x); new = probs_new(x, 0.3, 5, 0.85, 1024)
    res[f"maxdiff_{rows}"] = float((ref - new).abs().max())
    q = ref[0]
    t(f"multinomial_dense_{rows}", lambda: torch.multinomial(q, 1))
    t(f"greedy_conf_softmax_max_{rows}", lambda: x[0].float().softmax(-1).max(-1))
    t(f"greedy_argmax_{rows}", lambda: x[0].argmax(-1))
p = hub.probs(torch.randn(9, V, device=dev, dtype=torch.float16) * 3)
q = hub.probs(torch.randn(8, V, device=dev, dtype=torch.float16) * 3)
d = torch.randint(0, V, (8,), device=dev)
t("speculative_accept_k8", lambda: speculative_accept(p, q, d))
# draft-step host side: a tiny op chain like generate's per-step eager work
buf = torch.zeros(10, dtype=torch.long, device=dev); offs = torch.arange(10, device=dev)
def host_chain():
    pos = offs[3:4] + 100
    conf, buf[4] = x[0].float().softmax(-1).max(-1)
    return float(conf)
t("greedy_step_eager_tail_with_sync", host_chain)
print(json.dumps(res))
open(os.environ["OUT"] + "/micro.json", "w").write(json.dumps(res, indent=1))
