"""Acceptance of the INT4 draft with its head over the N most frequent tokens (FrequentVocabHead), SmolLM2-135M
(vocabulary 49,152; ids ranked in BPE merge order), CPU, float32, greedy, 64 new tokens, the prompts of
scripts/measure_acceptance.py (nine when this ran):

    python docs/perf/cpu-2026-12-04-draft-vocab-acceptance.py   # a line per head size, then one JSON line
"""
import json
import sys
import tempfile
from pathlib import Path

import torch

root = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(root / "scripts"), str(root)]
from convert_gguf import convert, installed_smollm2_gguf  # noqa: E402
from measure_acceptance import measure, summary  # noqa: E402

from selfspec.checkpoint import load_checkpoint  # noqa: E402
from selfspec.quantize import frequent_vocab, make_draft  # noqa: E402

with tempfile.TemporaryDirectory() as tmp:
    folder = convert(installed_smollm2_gguf(), Path(tmp) / "smollm2")
    ckpt, model, tokenizer = load_checkpoint(str(folder), torch.float32, torch.device("cpu"), 1024)
ranked = tokenizer.ids_by_frequency()
results = {}
for size in [None, 32768, 16384, 8192]:
    ids = None if size is None else frequent_vocab(ranked, size, model.args.vocab_size, [ckpt.eos_token_id])
    results[str(size)] = summary(measure(model, make_draft(model, head_vocab=ids), ckpt, tokenizer, n_predict=64))
    print(size, results[str(size)], flush=True)
print(json.dumps(results))
