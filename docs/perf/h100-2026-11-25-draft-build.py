"""How long building the INT4 draft takes on a GPU: make_draft on a 7B-shaped random model (twice: the first
call compiles the kernels), then quantize_int4 on single matrices with the torch version's slice sizes, the
whole Int4Linear (quantize + pack), and the INT8 head.

    python docs/perf/h100-2026-11-25-draft-build.py
"""
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]
from benchmark import random_model  # noqa: E402
from selfspec import quantize  # noqa: E402

model = random_model("7b", 2048)


def seconds(fn):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


for _ in range(2):
    print("make_draft", round(seconds(lambda: quantize.make_draft(model)), 3), "s")
layer = model.model.layers[0]
for name, weight in [("W_pack", layer.self_attn.W_pack.weight), ("down", layer.mlp.down_proj.weight)]:
    for rows in (1024, 8192, 16384):  # only the torch version slices
        ms = 1e3 * seconds(lambda: quantize.quantize_int4(weight, 64, rows_per_chunk=rows))
        print(name, rows, "quantize_int4", round(ms, 1), "ms")
    print(name, "Int4Linear", round(1e3 * seconds(lambda: quantize.Int4Linear(weight, 64)), 1), "ms")
print("Int8Linear head", round(1e3 * seconds(lambda: quantize.Int8Linear(model.lm_head.weight)), 1), "ms")
