"""The greedy pick in one Triton pass (selfspec/argmax_triton.py) against torch's softmax + max, on an H100:
  1. GPU time per call of argmax_triton.argmax_and_prob (block size, warps) and of torch's
     softmax(-1).max(-1) and argmax(-1), over 1 and 9 rows of 125,696 float16 logits (20 calls in one CUDA
     graph, so that no host launch cost is counted);
  2. generate() of commit 48add4d (torch's pick, positions added per draft step) against the current one,
     in one process, on the SmolLM2 proxy in the 7B shape (scripts/make_proxy.py), the nine chat prompts of
     scripts/measure_acceptance.py, 128 new tokens, greedy, three rounds after a warm-up.

    python docs/perf/h100-2026-11-25-greedy-pick-ab.py SMOLLM2_DIR OUT_DIR

It ran at commit df2bb84, where the kernels lived in selfspec/argmax_triton.py (now topk_triton.py).
"""
import importlib.util
import json
import os
import subprocess
import sys
import tempfile

root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path[:0] = [root, os.path.join(root, "scripts")]
import torch  # noqa: E402
from make_proxy import BAICHUAN2_7B_SHAPE, embed_llama, read_llama  # noqa: E402
from measure_acceptance import PROMPTS  # noqa: E402
from selfspec import argmax_triton  # noqa: E402
from selfspec import generate as new_generate  # noqa: E402
from selfspec.checkpoint import load_tokenizer, model_from_state_dict, open_checkpoint  # noqa: E402
from selfspec.cuda_graphs import graph_models  # noqa: E402
from selfspec.quantize import make_draft  # noqa: E402


def generate_module_at(commit: str):
    """selfspec/generate.py as it was at `commit`, imported as a module of its own."""
    source = subprocess.run(["git", "-C", root, "show", f"{commit}:selfspec/generate.py"], capture_output=True,
                            text=True, check=True).stdout.replace("from . import InputError", "from selfspec import InputError")
    path = os.path.join(tempfile.mkdtemp(), "old_generate.py")
    with open(path, "w") as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location("old_generate", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def graph_us(f, calls=20):
    """GPU time per call: `calls` calls captured in one CUDA graph (no host launch cost), replayed."""
    for _ in range(3):
        f()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(calls):
            f()
    g.replay()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(10):
        g.replay()
    b.record()
    torch.cuda.synchronize()
    return round(a.elapsed_time(b) / 10 / calls * 1e3, 2)


proxy, out = sys.argv[1], sys.argv[2]
res = {"sweep": {}}
V = 125696
for rows in (1, 9):
    x = torch.randn(rows, V, device="cuda", dtype=torch.float16) * 3
    for block, warps in [(512, 2), (1024, 4), (2048, 4), (2048, 8), (4096, 4), (4096, 8), (8192, 8)]:
        f = lambda: argmax_triton.argmax_and_prob(x, block, warps)  # noqa: E731
        res["sweep"][f"{rows}_{block}_{warps}"] = graph_us(f)
        assert torch.equal(f()[0], x.argmax(-1))
    res["sweep"][f"{rows}_torch_softmax_max"] = graph_us(lambda: x.float().softmax(-1).max(-1))
    res["sweep"][f"{rows}_torch_argmax"] = graph_us(lambda: x.argmax(-1))
print(res["sweep"], flush=True)

old_generate = generate_module_at("48add4d")
with torch.inference_mode():
    ckpt = open_checkpoint(proxy)
    tokenizer = load_tokenizer(ckpt)
    state, config = read_llama(proxy, device="cuda")
    state, config = embed_llama(state, config, BAICHUAN2_7B_SHAPE, dtype=torch.float16)
    model = model_from_state_dict(config, state, torch.float16, "cuda", 1024 + 128 + 9)
    del state
    model_g, draft_g = graph_models(model, make_draft(model))
    opts = dict(max_step_draft=8, eos_token_id=ckpt.eos_token_id)
    prompts = [ckpt.chat_ids(tokenizer, p, max_input_tokens=1024)[0] for p in PROMPTS]
    for ids in prompts:  # warm-up: captures the graphs
        for g in (old_generate, new_generate):
            g.generate(model_g, ids, 128, draft=draft_g, **opts)
            g.generate(model_g, ids, 128, **opts)
    outputs = {}
    for rnd in range(3):
        for name, g in (("old", old_generate), ("new", new_generate)):
            tot = {"plain": [0, 0.0], "spec": [0, 0.0]}
            outputs[name] = []
            for ids in prompts:
                for mode, d in (("plain", None), ("spec", draft_g)):
                    o, st = g.generate(model_g, ids, 128, draft=d, **opts)
                    tot[mode][0] += st.tokens_generated - 1
                    tot[mode][1] += st.e2e_time_s - st.first_token_latency_s
                    outputs[name].append(o)
            r = {m: v[0] / v[1] for m, v in tot.items()}  # decode tokens/s over all prompts
            r["speedup"] = r["spec"] / r["plain"]
            res.setdefault(name, []).append(r)
            print(rnd, name, r, flush=True)
    res["same_outputs_old_new"] = outputs["old"] == outputs["new"]
    res["new_spec_identical_to_plain"] = outputs["new"][0::2] == outputs["new"][1::2]
    print(json.dumps(res), flush=True)
    with open(os.path.join(out, "ab.json"), "w") as f:
        f.write(json.dumps(res, indent=1))
