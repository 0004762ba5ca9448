"""Whether the INT4 draft could also skip decoder layers (fewer bytes and launches a step): top-1 agreement of the
draft with the target along the target's greedy answers (64 tokens, the first 6 prompts of
bench/measure_acceptance.py; SmolLM2-135M-Instruct, 30 layers, CPU, float32), skipping the layers whose output
changes the residual stream least (relative norm of the update over two prompts), or runs of middle or late ones.

    python docs/perf/cpu-2026-12-07-layer-skip.py > OUT.json
"""
import json
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.harness import model_folder  # noqa: E402
from bench.measure_acceptance import PROMPTS, top1_agreement  # noqa: E402
from selfspec.checkpoint import load_checkpoint  # noqa: E402
from selfspec.draft import make_draft  # noqa: E402
from selfspec.generate import generate  # noqa: E402


@torch.inference_mode()
def main():
    with tempfile.TemporaryDirectory() as tmp:
        ckpt, model, tokenizer = load_checkpoint(str(model_folder(None, tmp)), torch.float32, torch.device("cpu"), 1024)
    draft = make_draft(model)
    layers = list(draft.model.layers)
    answers = []
    for prompt in PROMPTS[:6]:
        ids, _ = ckpt.chat_ids(tokenizer, prompt, max_input_tokens=900)
        answers.append((ids, generate(model, ids, 64, eos_token_id=ckpt.eos_token_id)[0]))

    update = [0.0] * len(layers)
    def measure_update(i):
        def hook(module, inputs, output):
            update[i] += float((output - inputs[0]).norm() / inputs[0].norm()) / 2
        return hook
    hooks = [layer.register_forward_hook(measure_update(i)) for i, layer in enumerate(model.model.layers)]
    for ids, answer in answers[:2]:
        tokens = torch.tensor([ids + answer])
        model(tokens, torch.arange(tokens.shape[1]))
    for hook in hooks:
        hook.remove()
    least = sorted(range(len(layers)), key=update.__getitem__)

    def agreement(skipped):
        draft.model.layers = nn.ModuleList(layer for i, layer in enumerate(layers) if i not in skipped)
        counts = [top1_agreement(model, draft, ids, answer) for ids, answer in answers]
        return sum(c[0] for c in counts) / sum(c[1] for c in counts)

    last = len(layers) - 1
    skips = {"none": []}
    skips.update({f"least {k}": sorted(least[:k]) for k in (1, 2, 3, 4, 6)})
    skips.update({f"middle {k}": list(range(len(layers) // 2 - k // 2, len(layers) // 2 + k - k // 2)) for k in (2, 4)})
    skips.update({f"late {k}": list(range(last - k, last)) for k in (2, 4)})
    results = {name: {"skipped": s, "top1_agreement": agreement(set(s))} for name, s in skips.items()}
    print(json.dumps({"relative_update": update, "layers": results}, indent=1))


if __name__ == "__main__":
    main()
