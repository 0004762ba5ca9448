"""Step costs of one H100 run, verification of up to 16 tokens (docs/performance.md): the 7B and 13B shapes,
random weights, position 1,088, graphs as in the benchmark; each cost over the plain FP16 step.

    python docs/perf/h100-2026-11-25-verify-up-to-16.py     (from the repository root; writes $OUT/verify16.json)
"""
import json, os, sys
sys.path[:0] = [".", "scripts"]
import torch
from benchmark import random_model, step_costs
from selfspec.cuda_graphs import graph_models
from selfspec.quantize import make_draft
torch.set_grad_enabled(False)
rows = {}
for shape in ("7b", "13b"):
    model = random_model(shape, 1024 + 128 + 16 + 64)
    draft = make_draft(model)
    model_g, draft_g = graph_models(model, draft)
    c = step_costs(model_g, draft_g, 1088, 15)
    rows[shape] = {k: round(v / c["plain_step_ms"], 4) for k, v in c.items()} | {"plain_step_ms": c["plain_step_ms"]}
    print(shape, json.dumps(rows[shape]), flush=True)
    del model, draft, model_g, draft_g
    torch.cuda.empty_cache()
json.dump(rows, open(os.path.join(os.environ.get("OUT", "."), "verify16.json"), "w"), indent=1)
