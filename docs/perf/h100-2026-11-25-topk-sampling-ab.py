"""Top-k sampling through topk_triton against the torch path before it, on an H100:
  1. GPU time of topk_triton.top_k (k = 1, 5, 32; block size and warps) and of Sampling.probs with the
     hub's settings (temperature 0.3, top-k 5, top-p 0.85), now and at commit d6f3ee8, over 1 and 9 rows of
     125,696 float16 logits (20 calls captured in one CUDA graph);
  2. generate() at d6f3ee8 against the current one in one process, on the SmolLM2 proxy in the 7B shape
     (scripts/make_proxy.py), the nine chat prompts of scripts/measure_acceptance.py, 128 new tokens,
     greedy and with the hub's sampling settings (a seeded generator per prompt), two rounds after a warm-up.

    OUT=OUT_DIR python docs/perf/h100-2026-11-25-topk-sampling-ab.py SMOLLM2_DIR

It loads the old generate.py (and the argmax_triton.py it imported, from df2bb84) from git; the device
machine has no git history, so there the same files were imported from copies.
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
from selfspec import generate as new_generate  # noqa: E402
from selfspec import topk_triton  # noqa: E402
from selfspec.checkpoint import load_tokenizer, model_from_state_dict, open_checkpoint  # noqa: E402
from selfspec.cuda_graphs import graph_models  # noqa: E402
from selfspec.generate import Sampling  # noqa: E402
from selfspec.quantize import make_draft  # noqa: E402


def generate_module_at(commit: str):
    """selfspec/generate.py at `commit` (d6f3ee8), with the argmax_triton.py of df2bb84 beside it."""
    folder = tempfile.mkdtemp()

    def show(path):
        return subprocess.run(["git", "-C", root, "show", path], capture_output=True, text=True, check=True).stdout

    with open(os.path.join(folder, "argmax_triton_old.py"), "w") as f:
        f.write(show("df2bb84:selfspec/argmax_triton.py"))
    with open(os.path.join(folder, "old_generate.py"), "w") as f:
        f.write(show(f"{commit}:selfspec/generate.py").replace(
            "from . import InputError, argmax_triton",
            "from selfspec import InputError\nimport argmax_triton_old as argmax_triton"))
    sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location("old_generate", os.path.join(folder, "old_generate.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def graph_us(f, calls=20):
    for _ in range(3): f()
    torch.cuda.synchronize(); g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(calls): f()
    g.replay(); torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(10): g.replay()
    b.record(); torch.cuda.synchronize()
    return round(a.elapsed_time(b) / 10 / calls * 1e3, 2)

out = os.environ["OUT"]; proxy = sys.argv[1]
res = {"kernels": {}}
old_generate = generate_module_at("d6f3ee8")
V = 125696
for rows in (1, 9):
    x = torch.randn(rows, V, device="cuda", dtype=torch.float16) * 3
    for k in (1, 5, 32):
        for block, warps in [(1024, 4), (2048, 4), (4096, 8)]:
            res["kernels"][f"top{k}_{rows}_{block}_{warps}"] = graph_us(lambda: topk_triton.top_k(x, k, block, warps))
    hub = Sampling(True, 0.3, 5, 0.85)
    res["kernels"][f"probs_hub_new_{rows}"] = graph_us(lambda: hub.probs(x))
    res["kernels"][f"probs_hub_old_{rows}"] = graph_us(lambda: old_generate.Sampling(True, 0.3, 5, 0.85).probs(x))
print(res["kernels"], flush=True)

with torch.inference_mode():
    ckpt = open_checkpoint(proxy); tok = load_tokenizer(ckpt)
    state, config = read_llama(proxy, device="cuda")
    state, config = embed_llama(state, config, BAICHUAN2_7B_SHAPE, dtype=torch.float16)
    model = model_from_state_dict(config, state, torch.float16, "cuda", 1024 + 128 + 9)
    del state
    mg, dg = graph_models(model, make_draft(model))
    opts = dict(max_step_draft=8, eos_token_id=ckpt.eos_token_id)
    prompts = [ckpt.chat_ids(tok, p, max_input_tokens=1024)[0] for p in PROMPTS]
    modes = {"greedy": {}, "hub": dict(do_sample=True, temperature=0.3, top_k=5, top_p=0.85)}
    for ids in prompts:
        for g in (old_generate, new_generate):
            for m in modes.values():
                g.generate(mg, ids, 128, draft=dg, **m, **opts); g.generate(mg, ids, 128, **m, **opts)
    for rnd in range(2):
        for mode, mopts in modes.items():
            for name, g in (("old", old_generate), ("new", new_generate)):
                tot = {"plain": [0, 0.0], "spec": [0, 0.0]}; dr = ac = 0; outs = []
                for i, ids in enumerate(prompts):
                    for kind, d in (("plain", None), ("spec", dg)):
                        gen = torch.Generator(device="cuda").manual_seed(i)
                        o, st = g.generate(mg, ids, 128, draft=d, generator=gen, **mopts, **opts)
                        tot[kind][0] += st.tokens_generated - 1; tot[kind][1] += st.e2e_time_s - st.first_token_latency_s
                        dr += st.drafted; ac += st.accepted; outs.append(o)
                r = {k: v[0] / v[1] for k, v in tot.items()}
                r["speedup"] = r["spec"] / r["plain"]; r["acceptance"] = ac / dr
                if mode == "greedy":
                    r["spec_equals_plain"] = outs[0::2] == outs[1::2]
                res.setdefault(f"{mode}_{name}", []).append(r)
                print(rnd, mode, name, r, flush=True)
    json.dump(res, open(out + "/sampling_ab.json", "w"), indent=1)
