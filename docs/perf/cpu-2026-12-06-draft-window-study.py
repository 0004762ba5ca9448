"""How much acceptance the INT4 draft keeps when its attention reads only part of the KV cache: the first SINK
positions and the last W (StreamingLLM's attention sinks and window), the FP16 model still attending to all of
it. Such a draft reads less of the cache per step (lossless: the FP16 model verifies), which matters for long
prompts, where the cache outgrows the draft's weights. A study, not engine code: the draft's mask is patched.

SmolLM2-135M-Instruct (float32, CPU) on bench/measure_acceptance.py's 13 prompts, INT4 draft alone, greedy;
speedups estimated at the H200's step costs as measure_acceptance.py estimates them (the draft's step cost is
left unchanged, so the estimate shows the acceptance cost of a window only).

    python docs/perf/cpu-2026-12-06-draft-window-study.py OUT.json
"""
import json
import sys
import tempfile
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.harness import model_folder  # noqa: E402
from bench.measure_acceptance import markdown, measure, summary  # noqa: E402
from selfspec.checkpoint import load_checkpoint  # noqa: E402
from selfspec.draft import make_draft  # noqa: E402

SINK = 4
WINDOWS = (None, 256, 128, 64, 32)  # None: the whole cache, today's draft


def windowed(window):
    """Transformer.attention_mask with keys beyond the sinks and the last `window` positions masked out."""
    def attention_mask(self, input_pos, end):
        mask = type(self).attention_mask(self, input_pos, end)
        key_pos = torch.arange(end, device=input_pos.device)
        far = (key_pos[None, :] >= SINK) & (key_pos[None, :] <= input_pos[:, None] - window)
        return mask.masked_fill(far, float("-inf"))
    return attention_mask


@torch.inference_mode()
def main():
    results = {"sink": SINK, "draft_step": 0.45, "verify_step": 1.04, "windows": {}}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt, model, tokenizer = load_checkpoint(str(model_folder(None, tmp)), torch.float32, "cpu", 2048)
        draft = make_draft(model)
        plain_cache = {}
        for window in WINDOWS:
            if window is not None:
                draft.attention_mask = types.MethodType(windowed(window), draft)
            records = measure(model, draft, ckpt, tokenizer, plain_cache=plain_cache, draft_step=0.45,
                              verify_step=1.04)
            results["windows"][str(window)] = {"summary": summary(records), "prompts": records}
            print(f"### window {window}\n\n{markdown(records)}\n", flush=True)
    Path(sys.argv[1]).write_text(json.dumps(results, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()
