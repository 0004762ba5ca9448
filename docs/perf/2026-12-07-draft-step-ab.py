"""A/B of settings of the graphed draft step. The norms' sums of squares from the GEMV before
(`fused_draft.squares_from_producer`), W_pack's and gate/up's kernels built for 5 blocks an SM
(`Tiling.min_blocks`), both. The decode attention's blocks of 64 or 256 keys instead of 128 (`attention.BLOCK_KV`;
plain steps timed too). down and o_proj with one row a warp (twice the blocks), down with eight loads a row a
thread. Graphed draft steps of the 7B and 13B shapes (random weights) at position 1,088, the variants alternated
over three rounds; the largest difference of each variant's logits from base's (0 expected but where the sum of
squares or of the keys runs in another order); registers a thread and blocks an SM of the GEMVs each built.
Earlier versions of this script (731f480, b36a5eb, git history) timed the norm weight and the keys loaded before
the wait.

    python docs/perf/2026-12-07-draft-step-ab.py OUT.json [VARIANT ...]   (default: all; base always)
"""
import dataclasses
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.harness import cuda_ms, free_cuda, random_model  # noqa: E402
from selfspec.accel import attention, fused_draft, graph_models, int4_cuda  # noqa: E402
from selfspec.draft import make_draft  # noqa: E402

POS = 1088
default_tiling = int4_cuda.default_tiling
MIN5 = {"W_pack": dict(min_blocks=5), "gate_up": dict(min_blocks=5)}
VARIANTS = {  # name: {kind: changes to its default tiling}
    "base": {}, "squares": {}, "min_blocks5": MIN5, "squares_min_blocks5": MIN5,
    "down_rows1": {"down": dict(rows=1)}, "down_unroll8": {"down": dict(unroll=8)},
    "o_proj_rows1": {"o_proj": dict(rows=1)}, "attention_block_kv64": {}, "attention_block_kv256": {},
}
SQUARES = ("squares", "squares_min_blocks5")
BLOCK_KV = {"attention_block_kv64": 64, "attention_block_kv256": 256}
PLAIN_TOO = ("base", "attention_block_kv64", "attention_block_kv256")


def kind(n, k, glu, norm) -> str:
    return "gate_up" if glu else "W_pack" if norm else "o_proj" if n == k else "down"


def kernel_facts(tilings) -> dict:
    """Registers a thread and blocks an SM of the kernels built for these tilings."""
    attribute = int4_cuda.driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_NUM_REGS
    facts = {}
    for key, (_, function, resident) in int4_cuda._kernels.items():
        t, variant = key[-2:]
        if (t, variant) in tilings:
            registers = int4_cuda._check(int4_cuda.driver.cuFuncGetAttribute(attribute, function))
            name = f"k{key[2]}{'_glu' if key[3] else ''}{'_norm' if key[5] else ''}_r{t.rows}u{t.unroll}w{t.warps}"
            name += "".join(f"_{flag}" for flag in variant)
            facts[name + f"_loop{t.blocks_per_sm}_min{t.min_blocks}"] = (registers, resident)
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
                    variant = (("norm_from_squares",) * (kw.get("norm_squares") is not None)
                               + ("squares_out",) * kw.get("with_squares", False))
                    chosen.update({(tiling, variant), (dataclasses.replace(tiling, blocks_per_sm=0), variant)})
                    return original_gemv(x, words, scales, group, tiling=tiling, **kw)

                int4_cuda.int4_gemv = gemv
                attention.BLOCK_KV = BLOCK_KV.get(name, 128)
                fused_draft.squares_from_producer = name in SQUARES
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
                attention.BLOCK_KV = 128
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
