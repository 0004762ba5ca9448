"""A/B of the draft's attention over a short cache: split into blocks of 128 keys and merged (the target's way,
`decode_attention`) against unsplit (`prefill_attention`, one program per head, its keys in blocks of 32 or 64
in a loop). Graphed draft steps of the 7B and 13B shapes (random weights) at positions 200, 450, 700 and 1,088,
the variants alternated over three rounds; the largest difference of each variant's logits from the split's.

    python docs/perf/2026-12-07-draft-unsplit-ab.py OUT.json
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
VARIANTS = {"split": (0, 64), "unsplit_32": (10**6, 32), "unsplit_64": (10**6, 64)}  # DRAFT_UNSPLIT_KEYS, BLOCK_N


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
                for name, (keys, block_n) in VARIANTS.items():
                    attention.DRAFT_UNSPLIT_KEYS, attention.DRAFT_UNSPLIT_BLOCKS = keys, (16, block_n)
                    _, draft_g = graph_models(model, draft)
                    logits[name] = draft_g(tok, offsets, pos + 1).float().clone()
                    times[name].append(cuda_ms(lambda: draft_g(tok, offsets, pos + 1), iters=100))
                    del draft_g
            results["shapes"][f"{shape}@{pos}"] = {
                "draft_step_ms": times,
                "max_logit_diff_from_split": {k: float((v - logits["split"]).abs().max()) for k, v in logits.items()}}
            print(shape, pos, json.dumps(results["shapes"][f"{shape}@{pos}"]), flush=True)
        del model, draft
        free_cuda()
    Path(sys.argv[1]).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
