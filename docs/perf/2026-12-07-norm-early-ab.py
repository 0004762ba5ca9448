"""A/B of where the INT4 GEMV's norm prologue reads the norm's weight: from global memory once the sum of squares
is known (today's default, "base"), or from shared memory, copied there before the grid-dependency wait
(`Tiling.norm_weight_early`), in W_pack and gate/up (the GEMVs with the norm prologue). Graphed draft steps of the
7B and 13B shapes (random weights) at position 1,088, the variants alternated over three rounds; the largest
difference of the variant's logits from base's (0 expected); registers a thread and blocks an SM.

    python docs/perf/2026-12-07-norm-early-ab.py OUT.json
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
VARIANTS = {"base": False, "norm_weight_early": True}


def kernel_facts(tilings) -> dict:
    """Registers a thread and blocks an SM of the kernels built for these tilings."""
    attribute = int4_cuda.driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_NUM_REGS
    facts = {}
    for key, (_, function, resident) in int4_cuda._kernels.items():
        if key[-1] in tilings:
            registers = int4_cuda._check(int4_cuda.driver.cuFuncGetAttribute(attribute, function))
            name = f"k{key[2]}{'_glu' if key[3] else ''}{'_norm' if key[5] else ''}_loop{key[-1].blocks_per_sm}"
            facts[name + ("_norm_weight_early" if key[-1].norm_weight_early else "")] = (registers, resident)
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
            for name, early in VARIANTS.items():
                chosen = set()

                def gemv(x, words, scales, group, tiling=None, early=early, chosen=chosen, **kw):
                    n, k = words.shape[0], words.shape[1] * 8
                    tiling = dataclasses.replace(tiling or default_tiling(n, k), norm_weight_early=early)
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
