"""A/B of the draft's one-token attention over short caches: three kernels (rope_and_store, the blocks' kernel, the
merge; attention.DRAFT_ONE_KERNEL_KEYS 0) against one (attend_draft_step, its keys and values loaded before any math)
with blocks of 32 keys and 2 warps, 64 and 2, 128 and 4. Graphed draft steps of the 7B and 13B shapes (random
weights) at positions 200, 450, 700 and 1,088, the variants alternated over three rounds; the largest difference of
each variant's logits from the three kernels' (rounding only).

    python docs/perf/2026-12-07-draft-one-kernel-ab.py OUT.json
"""
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.harness import cuda_ms, free_cuda, random_model  # noqa: E402
from selfspec.accel import attention, graph_models  # noqa: E402
from selfspec.draft import make_draft  # noqa: E402

POSITIONS = (200, 450, 700, 1088)
VARIANTS = {"three_kernels": (0, 64, 2), "one_kernel_32_w2": (10**6, 32, 2), "one_kernel_64_w2": (10**6, 64, 2),
            "one_kernel_128_w4": (10**6, 128, 4)}  # DRAFT_ONE_KERNEL_KEYS, DRAFT_BLOCK_KV, DRAFT_WARPS


@torch.inference_mode()
def main():
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "shapes": {}}
    tok = torch.zeros(1, 1, dtype=torch.long, device="cuda")
    for shape in ("7b", "13b"):
        model = random_model(shape, max(POSITIONS) + 256)
        draft = make_draft(model)
        for pos in POSITIONS:
            offsets = torch.tensor([pos], device="cuda")
            times, logits = {name: [] for name in VARIANTS}, {}
            for _ in range(3):
                for name, (keys, block_kv, warps) in VARIANTS.items():
                    attention.DRAFT_ONE_KERNEL_KEYS, attention.DRAFT_BLOCK_KV, attention.DRAFT_WARPS = keys, block_kv, warps
                    _, draft_g = graph_models(model, draft)
                    logits[name] = draft_g(tok, offsets, pos + 1).float().clone()
                    times[name].append(cuda_ms(lambda: draft_g(tok, offsets, pos + 1), iters=100))
                    del draft_g
            results["shapes"][f"{shape}@{pos}"] = {
                "draft_step_ms": times,
                "max_logit_diff_from_three_kernels": {k: float((v - logits["three_kernels"]).abs().max())
                                                      for k, v in logits.items()}}
            print(shape, pos, json.dumps(results["shapes"][f"{shape}@{pos}"]), flush=True)
        del model, draft
        free_cuda()
    Path(sys.argv[1]).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
