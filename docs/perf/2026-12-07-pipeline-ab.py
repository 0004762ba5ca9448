"""A/B of the CUDA INT4 GEMV's walk over its weights: a step's loads all issued, then all summed (today's
default, "base"), or half steps in two sets of registers, one summed while the next loads, across the ends of
tiles (`Tiling.pipeline`), for every GEMV of the draft (its grids as many blocks an SM as fit, or 5, as many as
fit today: the pipelined kernels take fewer registers) or for some kinds of them.
Graphed draft steps of the 7B and 13B shapes (random weights) at position 1,088, the variants alternated over
three rounds; the largest difference of each variant's logits from base's (0 expected: the same sums in the same
order); registers a thread and blocks an SM of the kernels each variant built.

    python docs/perf/2026-12-07-pipeline-ab.py OUT.json
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
KINDS = ("W_pack", "o_proj", "gate_up", "down")
default_tiling = int4_cuda.default_tiling
# name: (the kinds that walk pipelined, blocks an SM where a grid loops over tiles: 0 as many as fit)
VARIANTS = {"base": ((), 0), "pipeline": (KINDS, 0), "pipeline_5_an_sm": (KINDS, 5), "pipeline_W_pack": (("W_pack",), 0),
            "pipeline_gate_up": (("gate_up",), 0), "pipeline_o_proj_down": (("o_proj", "down"), 0)}


def kind(n, k, glu, norm) -> str:
    return "gate_up" if glu else "W_pack" if norm else "o_proj" if n == k else "down"


def kernel_facts(tilings) -> dict:
    """Registers a thread and blocks an SM of the kernels built for these tilings."""
    attribute = int4_cuda.driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_NUM_REGS
    facts = {}
    for key, (_, function, resident) in int4_cuda._kernels.items():
        if key[-1] in tilings:
            registers = int4_cuda._check(int4_cuda.driver.cuFuncGetAttribute(attribute, function))
            name = f"k{key[2]}{'_glu' if key[3] else ''}{'_norm' if key[5] else ''}_loop{key[-1].blocks_per_sm}"
            facts[name + ("_pipeline" if key[-1].pipeline else "")] = (registers, resident)
    return facts


@torch.inference_mode()
def main():
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "pos": POS, "shapes": {}}
    tok = torch.zeros(1, 1, dtype=torch.long, device="cuda")
    offsets = torch.tensor([POS], device="cuda")
    original_gemv = int4_cuda.int4_gemv
    for shape in ("7b", "13b"):
        model = random_model(shape, POS + 64)
        draft = make_draft(model)
        times, logits, facts = {name: [] for name in VARIANTS}, {}, {}
        for _ in range(3):
            for name, (kinds, blocks_per_sm) in VARIANTS.items():
                chosen = set()

                def gemv(x, words, scales, group, tiling=None, kinds=kinds, blocks_per_sm=blocks_per_sm, chosen=chosen,
                         **kw):
                    n, k = words.shape[0], words.shape[1] * 8
                    tiling = tiling or default_tiling(n, k)
                    if kind(n, k, kw.get("glu", False), kw.get("norm_weight") is not None) in kinds:
                        tiling = dataclasses.replace(tiling, pipeline=True,
                                                     blocks_per_sm=blocks_per_sm or tiling.blocks_per_sm)
                    chosen.update({tiling, dataclasses.replace(tiling, blocks_per_sm=0)})
                    return original_gemv(x, words, scales, group, tiling=tiling, **kw)

                int4_cuda.int4_gemv = gemv
                try:
                    _, draft_g = graph_models(model, draft)
                    logits[name] = draft_g(tok, offsets, POS + 1).float().clone()
                    times[name].append(cuda_ms(lambda: draft_g(tok, offsets, POS + 1), iters=100))
                    facts[name] = kernel_facts(chosen)
                    del draft_g
                except Exception as error:  # noqa: BLE001 - a variant that does not build is a result too
                    times[name].append(repr(error)[:200])
        int4_cuda.int4_gemv = original_gemv
        results["shapes"][shape] = {
            "draft_step_ms": times, "registers_and_blocks_per_sm": facts,
            "max_logit_diff_from_base": {k: float((v - logits["base"]).abs().max()) for k, v in logits.items()}}
        print(shape, json.dumps(results["shapes"][shape]), flush=True)
        del model, draft
        free_cuda()
    Path(sys.argv[1]).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
