"""A/B of settings of the graphed draft step, per kind of INT4 GEMV (W_pack, o_proj, gate/up, down): base, the
default tiling (one row a warp where those tiles fit in one wave of resident blocks and a row takes more than one
step of a warp's loop: the 7B shape's down); down with two rows a warp (the default before) and with one (where
those tiles take more than a wave: the 13B shape's); W_pack and o_proj with one row a warp. Graphed draft steps of
the 7B and 13B shapes (random weights) at position 1,088, the variants alternated over three rounds; the largest
difference of each variant's logits from base's (0 expected); registers a thread and blocks an SM of the GEMVs.
The versions of this script in git history timed the norm weight and the keys loaded before the wait (731f480),
the attention's blocks of keys and more tilings (b36a5eb), the norms' sums of squares from the GEMV before and
__launch_bounds__ for 5 blocks an SM (5bc4ce2).

    python docs/perf/2026-12-07-draft-step-ab.py OUT.json [VARIANT ...]   (default: all; base always)
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
VARIANTS = {  # name: {kind: changes to its default tiling}
    "base": {}, "down_rows2": {"down": dict(rows=2)}, "down_rows1": {"down": dict(rows=1)},
    "w_pack_rows1": {"W_pack": dict(rows=1)}, "o_proj_rows1": {"o_proj": dict(rows=1)},
}
PLAIN_TOO = ("base",)


def kind(n, k, glu, norm) -> str:
    return "gate_up" if glu else "W_pack" if norm else "o_proj" if n == k else "down"


def kernel_facts(tilings) -> dict:
    """Registers a thread and blocks an SM of the kernels built for these tilings."""
    attribute = int4_cuda.driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_NUM_REGS
    facts = {}
    for key, (_, function, resident) in int4_cuda._kernels.items():
        t = key[-1]
        if t in tilings:
            registers = int4_cuda._check(int4_cuda.driver.cuFuncGetAttribute(attribute, function))
            name = f"k{key[2]}{'_glu' if key[3] else ''}{'_norm' if key[5] else ''}_r{t.rows}u{t.unroll}w{t.warps}"
            facts[name + f"_loop{t.blocks_per_sm}"] = (registers, resident)
    return facts


@torch.inference_mode()
def main():
    chosen_variants = {"base", *(sys.argv[2:] or VARIANTS)}
    for name in set(VARIANTS) - chosen_variants:
        del VARIANTS[name]
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "pos": POS, "shapes": {}}
    tok = torch.zeros(1, 1, dtype=torch.long, device="cuda")
    offsets = torch.tensor([POS], device="cuda")
    original_gemv = int4_cuda.int4_gemv
    for shape in ("7b", "13b"):
        model = random_model(shape, POS + 64)
        draft = make_draft(model)
        times, logits, facts = {name: [] for name in VARIANTS}, {}, {}
        plain = {name: [] for name in PLAIN_TOO}
        for _ in range(3):
            for name, changes in VARIANTS.items():
                chosen = set()

                def gemv(x, words, scales, group, tiling=None, changes=changes, chosen=chosen, **kw):
                    n, k = words.shape[0], words.shape[1] * 8
                    which = kind(n, k, kw.get("glu", False), kw.get("norm_weight") is not None)
                    tiling = dataclasses.replace(tiling or default_tiling(n, k), **changes.get(which, {}))
                    rows = (tiling.rows,) if tiling.rows else (1, 2)  # 0: _grid chooses
                    chosen.update(dataclasses.replace(tiling, rows=r, blocks_per_sm=loop)
                                  for r in rows for loop in (0, tiling.blocks_per_sm))
                    return original_gemv(x, words, scales, group, tiling=tiling, **kw)

                int4_cuda.int4_gemv = gemv
                try:
                    model_g, draft_g = graph_models(model, draft)
                    logits[name] = draft_g(tok, offsets, POS + 1).float().clone()
                    times[name].append(cuda_ms(lambda: draft_g(tok, offsets, POS + 1), iters=100))
                    if name in PLAIN_TOO:
                        plain[name].append(cuda_ms(lambda: model_g(tok, offsets, POS + 1), iters=50))
                    facts[name] = kernel_facts(chosen)
                    del model_g, draft_g
                except Exception as error:  # noqa: BLE001 - a variant that does not build is a result too
                    times[name].append(repr(error)[:200])
        int4_cuda.int4_gemv = original_gemv
        results["shapes"][shape] = {
            "draft_step_ms": times, "plain_step_ms": plain, "registers_and_blocks_per_sm": facts,
            "max_logit_diff_from_base": {k: float((v - logits["base"]).abs().max()) for k, v in logits.items()}}
        print(shape, json.dumps(results["shapes"][shape]), flush=True)
        del model, draft
        free_cuda()
    Path(sys.argv[1]).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
