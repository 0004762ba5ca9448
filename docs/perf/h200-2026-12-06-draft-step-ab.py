"""A/B of the draft step's MLP block as one persistent kernel (accel/mlp_cuda.py, 16 warps a block; also 12)
against two GEMV launches, and of the CUDA INT4 GEMV's default tiling (2 rows a warp, up to 4 loads of 16
bytes per row in flight per thread, 4 warps a block) against 4 rows a warp with half the loads per row. Graphed
draft steps of the 7B and 13B shapes (random weights) at position 1,088, the variants alternated over two
rounds; the largest difference of each variant's draft logits from the default's (another summation
order); the registers each variant's GEMVs take.

    python docs/perf/h200-2026-12-06-draft-step-ab.py OUT.json
"""
import dataclasses
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.harness import cuda_ms, free_cuda, random_model  # noqa: E402
from selfspec.accel import graph_models, int4_cuda, mlp_cuda  # noqa: E402
from selfspec.draft import make_draft  # noqa: E402

POS = 1088
default_tiling = int4_cuda.default_tiling
VARIANTS = {
    "default": lambda n, k, t: t,
    "mlp_as_two_gemvs": lambda n, k, t: t,
    "mlp_12_warps": lambda n, k, t: t,
    "rows_4_half_unroll": lambda n, k, t: dataclasses.replace(t, rows=4, unroll=max(1, t.unroll // 2)),
}
# Tried in the first run of this script (docs/perf/h100-2026-12-06-draft-step-ab-shared-steps.json, where the GEMV
# ran through the shared step functions): 8 warps for the MLP kernel, Tiling(min_blocks=8), one row a warp for
# o_proj, the L2 256-byte hint; none faster than the default.


def registers(tiling_of) -> list[int]:
    """Registers per thread of the loaded kernels whose tiling this variant chose."""
    attribute = int4_cuda.driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_NUM_REGS
    return sorted({int4_cuda._check(int4_cuda.driver.cuFuncGetAttribute(attribute, function))
                   for key, (_, function) in int4_cuda._kernels.items() if key[-1] in tiling_of})


@torch.inference_mode()
def main():
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "pos": POS, "shapes": {}}
    tok = torch.zeros(1, 1, dtype=torch.long, device="cuda")
    offs = torch.tensor([POS], device="cuda")
    for shape in ("7b", "13b"):
        model = random_model(shape, POS + 64)
        draft = make_draft(model)
        times, logits, regs = {name: [] for name in VARIANTS}, {}, {}
        for _ in range(2):
            for name, change in VARIANTS.items():
                chosen = set()

                def tiling(n, k, change=change, chosen=chosen):
                    t = change(n, k, default_tiling(n, k))
                    chosen.add(t)
                    return t

                int4_cuda.default_tiling = tiling
                mlp_cuda.enabled = name in ("default", "mlp_12_warps")
                mlp_cuda.WARPS = int(name.split("_")[1]) if name.endswith("_warps") else 16
                draft.__dict__.pop("_mlp_kernel_serves", None)  # planned again with these warps
                model_g, draft_g = graph_models(model, draft)
                logits[name] = draft_g(tok, offs, POS + 1).float().clone()
                times[name].append(cuda_ms(lambda: draft_g(tok, offs, POS + 1), iters=100))
                regs[name] = registers(chosen)
                del model_g, draft_g
        plain_g, _ = graph_models(model, None)
        results["shapes"][shape] = {
            "mlp_in_one_kernel": draft.mlp_in_one_kernel(), "plain_step_ms": cuda_ms(lambda: plain_g(tok, offs, POS + 1), iters=50),
            "draft_step_ms": times, "registers": regs,
            "max_logit_diff_from_default": {k: float((v - logits["default"]).abs().max()) for k, v in logits.items()}}
        print(shape, json.dumps(results["shapes"][shape]), flush=True)
        del model, draft, plain_g
        free_cuda()
    int4_cuda.default_tiling, mlp_cuda.enabled, mlp_cuda.WARPS = default_tiling, True, 16
    Path(sys.argv[1]).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
