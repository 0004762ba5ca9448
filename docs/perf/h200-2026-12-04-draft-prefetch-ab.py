"""A/B of the draft step's INT4 GEMV launch variants on a random 7B-shaped model (H200, CUDA graphs, PDL):
each program asking L2 for its weight rows before it waits for the kernel before it (PREFETCH), and letting
the next kernel launch from its start instead of after its loop (EARLY).

    python docs/perf/h200-2026-12-04-draft-prefetch-ab.py [--shape 7b] [--rounds 3]
"""
import argparse
import json
import sys
from pathlib import Path

import torch

root = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(root), str(root / "scripts")]
from benchmark import SHAPES, cuda_ms, random_model  # noqa: E402
from selfspec import int4_triton  # noqa: E402
from selfspec.cuda_graphs import GraphedModel, graph_models  # noqa: E402
from selfspec.quantize import make_draft  # noqa: E402


@torch.inference_mode()
def main():
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="7b", choices=sorted(SHAPES))
    p.add_argument("--pos", type=int, default=1088)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    model = random_model(args.shape, args.pos + 64)
    draft = make_draft(model)
    model_g, _ = graph_models(model)
    tok = torch.zeros(1, 1, dtype=torch.long, device="cuda")
    pos = torch.tensor([args.pos], device="cuda")
    plain = cuda_ms(lambda: model_g(tok, pos, args.pos + 1), iters=50)
    rows = []
    for r in range(args.rounds):
        for prefetch, early in [(False, False), (True, False), (False, True), (True, True)]:
            int4_triton.PREFETCH, int4_triton.EARLY_LAUNCH = prefetch, early
            draft_g = GraphedModel(draft)
            ms = cuda_ms(lambda: draft_g(tok, pos, args.pos + 1), iters=50)
            rows.append({"round": r, "prefetch": prefetch, "early": early, "draft_ms": ms, "plain_ms": plain,
                         "ratio": ms / plain})
            print(f"round {r} prefetch={prefetch!s:5} early={early!s:5} draft {ms:.3f} ms = {ms / plain:.3f}x plain "
                  f"({plain:.3f} ms)", flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
