"""Kernel time of one eager prefill of 1,024 tokens per shape (random weights), by kernel, and the graphed
prefill's time:

    python docs/perf/h100-2026-11-25-prefill-profile.py 7b 13b
"""
import os
import sys

root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path[:0] = [root, os.path.join(root, "scripts")]
import torch  # noqa: E402
from benchmark import cuda_ms, random_model  # noqa: E402
from selfspec.cuda_graphs import graph_models  # noqa: E402
torch.set_grad_enabled(False)
for shape in sys.argv[1:]:
    model = random_model(shape, 1024 + 256)
    tok = torch.randint(0, 1000, (1, 1024), device="cuda")
    pos = torch.arange(1024, device="cuda")
    for _ in range(3):
        model(tok, pos, 1024, last_only=True)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        model(tok, pos, 1024, last_only=True)
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    total = sum(e.device_time_total for e in events)
    print(f"\n{shape} prefill: {total / 1e3:.2f} ms of kernels in {sum(e.count for e in events)} launches")
    for e in sorted(events, key=lambda e: -e.device_time_total)[:16]:
        print(f"  {e.device_time_total / 1e3:7.3f} ms  {e.count:5d}x  {e.key[:100]}")
    g, _ = graph_models(model)
    print(shape, "graphed prefill ms", round(cuda_ms(lambda: g(tok, pos, 1024, last_only=True), iters=10), 2))
    del model, g
    torch.cuda.empty_cache()
