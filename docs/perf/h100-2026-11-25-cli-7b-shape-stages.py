"""The CLI's steps with a timer each (the calls speculative.py makes), on a checkpoint folder.

    python docs/perf/h100-2026-11-25-cli-7b-shape-stages.py CKPT [cuda|cpu]
"""
import json
import sys
import time
from pathlib import Path
import torch
ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT)]
T0 = time.perf_counter()
from selfspec.checkpoint import load_checkpoint
from selfspec.cuda_graphs import graph_models
from selfspec.generate import generate, synchronize
from selfspec.quantize import make_draft
import speculative
dev = torch.device(sys.argv[2] if len(sys.argv) > 2 else "cuda")
stages = {"imports": time.perf_counter() - T0}
def mark(name, t):
    synchronize(dev); stages[name] = round(time.perf_counter() - t, 2); return time.perf_counter()
t = time.perf_counter()
ckpt, model, tok = load_checkpoint(sys.argv[1], torch.float16, dev, draft_group_size=64)
t = mark("load_checkpoint", t)
draft = make_draft(model)
t = mark("make_draft", t)
model_g, draft_g = graph_models(model, draft) if dev.type == "cuda" else (model, draft)
t = mark("graph_models", t)
ids, _ = ckpt.chat_ids(tok, speculative.DEFAULT_PROMPT, max_input_tokens=model.max_seq_len - 128)
opts = dict(draft=draft_g, eos_token_id=ckpt.eos_token_id)
generate(model_g, ids, 128, **opts)
t = mark("warmup generate (compiles, captures)", t)
_, s = generate(model_g, ids, 128, **opts)
t = mark("timed generate", t)
stages["prompt_tokens"] = len(ids)
stages["tokens"] = s.tokens_generated
stages["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2) if dev.type == "cuda" else None
print(json.dumps(stages))
