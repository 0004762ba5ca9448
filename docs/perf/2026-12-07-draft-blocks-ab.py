"""A/B of the keys per block in the draft's decode attention (attention.draft_block_kv against fixed blocks of 16,
32, 64 and 128 keys, 128 being the target's): graphed draft steps of the 7B and 13B shapes (random weights) at
positions 200, 450 (the SmolLM2 proxy's), 1,088 and 3,008, the variants alternated over three rounds; the
largest difference of each variant's logits from those of 128 keys (rounding only).

    python docs/perf/2026-12-07-draft-blocks-ab.py OUT.json
"""
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.harness import cuda_ms, free_cuda, random_model  # noqa: E402
from selfspec.accel import attention, graph_models  # noqa: E402
from selfspec.draft import make_draft  # noqa: E402

POSITIONS = (200, 450, 1088, 3008)
by_length = attention.draft_block_kv
VARIANTS = {"by_length": by_length, **{f"fixed_{n}": (lambda n: lambda end, window=None: n)(n) for n in (16, 32, 64, 128)}}


@torch.inference_mode()
def main():
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "shapes": {}}
    tok = torch.zeros(1, 1, dtype=torch.long, device="cuda")
    for shape in ("7b", "13b"):
        model = random_model(shape, max(POSITIONS) + 64)
        draft = make_draft(model)
        for pos in POSITIONS:
            offsets = torch.tensor([pos], device="cuda")
            times, logits = {name: [] for name in VARIANTS}, {}
            for _ in range(3):
                for name, choose in VARIANTS.items():
                    attention.draft_block_kv = choose
                    _, draft_g = graph_models(model, draft)
                    logits[name] = draft_g(tok, offsets, pos + 1).float().clone()
                    times[name].append(cuda_ms(lambda: draft_g(tok, offsets, pos + 1), iters=100))
                    del draft_g
            attention.draft_block_kv = by_length
            results["shapes"][f"{shape}@{pos}"] = {
                "by_length_block_kv": by_length(-(-(pos + 1) // 256) * 256),
                "draft_step_ms": times,
                "max_logit_diff_from_128": {k: float((v - logits["fixed_128"]).abs().max()) for k, v in logits.items()}}
            print(shape, pos, json.dumps(results["shapes"][f"{shape}@{pos}"]), flush=True)
        del model, draft
        free_cuda()
    Path(sys.argv[1]).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
