"""A/B of the ways the CUDA INT4 GEMV loads its weights: each step's weights loaded into registers and then used,
the first step's before the grid-dependency wait (today's default, "base"), or after it (`Tiling.early=0`, for
every GEMV of the draft or one kind of them: W_pack, o_proj, gate/up, down); weights passing through a ring of 2-3
steps in shared memory, filled by cp.async that many steps ahead (`Tiling.stages`, with 4 or 2 loads a thread a
row per step, one step or none before the wait); the norm's weight copied into shared memory before the wait
(`Tiling.norm_weight_early`); and the decode attention with blocks of 64 or 256 keys a program instead of 128
(`attention.BLOCK_KV`, plain steps too). Graphed draft steps of the 7B and 13B shapes (random weights)
at position 1,088, the variants alternated over three rounds; the largest difference of each variant's logits
from base's (0 expected but for the attention's blocks); registers per thread and blocks an SM.

    python docs/perf/2026-12-07-ring-ab.py OUT.json
"""
import dataclasses
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.harness import cuda_ms, free_cuda, random_model  # noqa: E402
from selfspec.accel import attention, graph_models, int4_cuda  # noqa: E402
from selfspec.draft import make_draft  # noqa: E402

POS = 1088
KINDS = ("W_pack", "o_proj", "gate_up", "down")
default_tiling = int4_cuda.default_tiling


def kind(n, k, glu, norm) -> str:
    return "gate_up" if glu else "W_pack" if norm else "o_proj" if n == k else "down"


def variant(kinds=KINDS, **changes):
    """The default tiling with these changes for these kinds."""
    def change(which, t):
        return dataclasses.replace(t, **changes) if which in kinds else t
    return change


VARIANTS = {
    "base": variant(), "after_wait": variant(early=0), "norm_early": variant(norm_weight_early=True),
    "after_wait_norm_early": variant(early=0, norm_weight_early=True),
    "ring2": variant(stages=2, early=1), "ring2_after_wait": variant(stages=2, early=0),
    "ring2_u2": variant(stages=2, unroll=2, early=1), "ring3_u2": variant(stages=3, unroll=2, early=1),
    "ring3_u2_after_wait": variant(stages=3, unroll=2, early=0),
    "ring2_norm_early": variant(stages=2, early=1, norm_weight_early=True),
}
VARIANTS.update({f"after_wait_{which}": variant((which,), early=0) for which in KINDS})
ATTENTION_BLOCKS = {"attention_kv64": 64, "attention_kv256": 256}  # decode attention's keys a program, not 128
VARIANTS.update({name: variant() for name in ATTENTION_BLOCKS})


def kernel_facts(tilings) -> dict:
    """Registers a thread and blocks an SM of the kernels built for these tilings."""
    attribute = int4_cuda.driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_NUM_REGS
    facts, gridless = {}, {dataclasses.replace(t, blocks_per_sm=0) for t in tilings}
    for key, (_, function, resident) in int4_cuda._kernels.items():
        if dataclasses.replace(key[-1], blocks_per_sm=0) in gridless:
            registers = int4_cuda._check(int4_cuda.driver.cuFuncGetAttribute(attribute, function))
            t = key[-1]
            name = f"k{key[2]}{'_glu' if key[3] else ''}{'_norm' if key[5] else ''}_s{t.stages}_u{t.unroll}_e{t.early}"
            facts[name + ("_n" if t.norm_weight_early else "")] = (registers, resident)
    return facts


@torch.inference_mode()
def main():
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "pos": POS, "shapes": {}}
    tok = torch.zeros(1, 1, dtype=torch.long, device="cuda")
    offs = torch.tensor([POS], device="cuda")
    original_gemv = int4_cuda.int4_gemv
    for shape in ("7b", "13b"):
        model = random_model(shape, POS + 64)
        draft = make_draft(model)
        times, logits, facts = {name: [] for name in VARIANTS}, {}, {}
        plain = {name: [] for name in ("base", *ATTENTION_BLOCKS)}
        for _ in range(3):
            for name, change in VARIANTS.items():
                chosen = set()

                def gemv(x, words, scales, group, tiling=None, change=change, chosen=chosen, **kw):
                    n, k = words.shape[0], words.shape[1] * 8
                    which = kind(n, k, kw.get("glu", False), kw.get("norm_weight") is not None)
                    tiling = change(which, tiling or default_tiling(n, k))
                    chosen.add(tiling)
                    return original_gemv(x, words, scales, group, tiling=tiling, **kw)

                int4_cuda.int4_gemv = gemv
                attention.BLOCK_KV = ATTENTION_BLOCKS.get(name, 128)
                try:
                    model_g, draft_g = graph_models(model, draft)
                    logits[name] = draft_g(tok, offs, POS + 1).float().clone()
                    times[name].append(cuda_ms(lambda: draft_g(tok, offs, POS + 1), iters=100))
                    if name in ATTENTION_BLOCKS or name == "base":
                        plain[name].append(cuda_ms(lambda: model_g(tok, offs, POS + 1), iters=50))
                    facts[name] = kernel_facts(chosen)
                    del model_g, draft_g
                except Exception as error:  # noqa: BLE001 - a variant that does not build is a result too
                    times[name].append(repr(error)[:200])
                attention.BLOCK_KV = 128
        int4_cuda.int4_gemv = original_gemv
        results["shapes"][shape] = {
            "plain_step_ms": plain, "draft_step_ms": times,
            "registers_and_blocks_per_sm": facts,
            "max_logit_diff_from_base": {k: float((v - logits["base"]).abs().max()) for k, v in logits.items()}}
        best = sorted((n for n in times if all(isinstance(t, float) for t in times[n])), key=lambda n: min(times[n]))
        print(shape, "best:", [(name, round(min(times[name]), 4)) for name in best[:6]], flush=True)
        print(shape, json.dumps(results["shapes"][shape]), flush=True)
        del model, draft
        free_cuda()
    Path(sys.argv[1]).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
