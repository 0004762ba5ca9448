"""A/B of where the CUDA INT4 GEMV lets the next kernel launch (PDL): after its loop, or as soon as its own
inputs are ready (`Tiling.launch_next_early`, the default since this A/B). Graphed draft steps of the 7B and 13B shapes
(random weights) at position 1,088, alternating the two, two rounds; the plain step as a control; the
draft's logits compared bit for bit.

    python docs/perf/h100-2026-12-06-launch-next-ab.py OUT.json
"""
import dataclasses
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.harness import cuda_ms, free_cuda, random_model  # noqa: E402
from selfspec.accel import graph_models, int4_cuda  # noqa: E402
from selfspec.draft import make_draft  # noqa: E402

POS = 1088
default_tiling = int4_cuda.default_tiling


@torch.inference_mode()
def main():
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "pos": POS, "shapes": {}}
    tok = torch.zeros(1, 1, dtype=torch.long, device="cuda")
    offs = torch.tensor([POS], device="cuda")
    for shape in ("7b", "13b"):
        model = random_model(shape, POS + 64)
        draft = make_draft(model)
        rows, logits = {"late": [], "early": [], "plain": []}, {}
        for _ in range(2):
            for name in ("late", "early"):
                int4_cuda.default_tiling = lambda n, k, e=(name == "early"): dataclasses.replace(
                    default_tiling(n, k), launch_next_early=e)
                model_g, draft_g = graph_models(model, draft)
                logits[name] = draft_g(tok, offs, POS + 1).clone()
                rows[name].append(cuda_ms(lambda: draft_g(tok, offs, POS + 1), iters=100))
                rows["plain"].append(cuda_ms(lambda: model_g(tok, offs, POS + 1), iters=50))
                del model_g, draft_g
        results["shapes"][shape] = {"draft_step_ms": {k: v for k, v in rows.items() if k != "plain"},
                                    "plain_step_ms": rows["plain"],
                                    "draft_logits_identical": bool(torch.equal(logits["late"], logits["early"]))}
        print(shape, json.dumps(results["shapes"][shape]), flush=True)
        del model, draft
        free_cuda()
    Path(sys.argv[1]).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
