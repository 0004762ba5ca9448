"""A/B of the CUDA INT4 GEMV's grid: a block per tile of rows against grids of at most B blocks an SM (capped at
what fits at once) whose blocks loop over the tiles (`Tiling.blocks_per_sm`), copying and normalising x once per
block instead of once per tile; for the GEMVs with many rows (W_pack and gate/up, which also normalise x), for
one of them, or for all; and today's default. Graphed draft steps of the 7B and 13B shapes (random weights) at
position 1,088, the variants alternated over three rounds; the largest difference of each variant's draft
logits from a block per tile's; registers per thread.

    python docs/perf/h100-2026-12-06-tile-loop-ab.py OUT.json

Its run of 2026-12-06 (h100-2026-12-06-tile-loop-ab.json) came before the default looped and before the grid
was capped: its "default" is a block per tile, and its loop_6 and loop_8 asked for more blocks than an SM
holds (5 of these kernels), which left a second wave; the default now loops in a grid of what fits.
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


KINDS = ("W_pack", "o_proj", "gate_up", "down")


def kind(n, k, glu, norm) -> str:
    return "gate_up" if glu else "W_pack" if norm else "o_proj" if n == k else "down"


def variant(blocks, kinds=("W_pack", "gate_up")):
    """Tiling(blocks_per_sm=blocks) for the GEMVs of these kinds."""
    def change(which, n, k, t):
        return dataclasses.replace(t, blocks_per_sm=blocks) if which in kinds else t
    return change


VARIANTS = {"block_per_tile": variant(0, KINDS), "default": lambda which, n, k, t: t}
VARIANTS.update({f"loop_{b}": variant(b) for b in (3, 4, 5, 6, 8)})
VARIANTS.update({f"loop_{b}_{which}": variant(b, (which,)) for b in (4, 6) for which in ("W_pack", "gate_up")})
VARIANTS["loop_4_all"] = variant(4, KINDS)


def registers(tilings) -> list[int]:
    attribute = int4_cuda.driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_NUM_REGS
    return sorted({int4_cuda._check(int4_cuda.driver.cuFuncGetAttribute(attribute, function))
                   for key, (_, function, _) in int4_cuda._kernels.items() if key[-1] in tilings})


@torch.inference_mode()
def main():
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "pos": POS, "shapes": {}}
    tok = torch.zeros(1, 1, dtype=torch.long, device="cuda")
    offs = torch.tensor([POS], device="cuda")
    original_gemv = int4_cuda.int4_gemv
    for shape in ("7b", "13b"):
        model = random_model(shape, POS + 64)
        draft = make_draft(model)
        times, logits, regs = {name: [] for name in VARIANTS}, {}, {}
        for _ in range(3):
            for name, change in VARIANTS.items():
                chosen = set()

                def gemv(x, words, scales, group, tiling=None, change=change, chosen=chosen, **kw):
                    n, k = words.shape[0], words.shape[1] * 8
                    which = kind(n, k, kw.get("glu", False), kw.get("norm_weight") is not None)
                    tiling = change(which, n, k, tiling or default_tiling(n, k))
                    chosen.add(tiling)
                    return original_gemv(x, words, scales, group, tiling=tiling, **kw)

                int4_cuda.int4_gemv = gemv
                model_g, draft_g = graph_models(model, draft)
                logits[name] = draft_g(tok, offs, POS + 1).float().clone()
                times[name].append(cuda_ms(lambda: draft_g(tok, offs, POS + 1), iters=100))
                regs[name] = registers(chosen)
                del model_g, draft_g
        int4_cuda.int4_gemv = original_gemv
        plain_g, _ = graph_models(model, None)
        results["shapes"][shape] = {
            "plain_step_ms": cuda_ms(lambda: plain_g(tok, offs, POS + 1), iters=50), "draft_step_ms": times,
            "registers": regs,
            "max_logit_diff_from_block_per_tile": {k: float((v - logits["block_per_tile"]).abs().max())
                                                   for k, v in logits.items()}}
        print(shape, json.dumps(results["shapes"][shape]), flush=True)
        del model, draft, plain_g
        free_cuda()
    Path(sys.argv[1]).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
