"""speculative_accept on the top-k candidates (and a round's positions sliced from one tensor) against the
code before (commit cd1a6f7), in one process on an H100: the SmolLM2 proxy in the 7B shape
(scripts/make_proxy.py), the nine chat prompts of scripts/measure_acceptance.py, 128 new tokens, greedy and
with the hub's sampling settings (temperature 0.3, top-k 5, top-p 0.85; a seeded generator per prompt), two
rounds after a warm-up.

    OUT=OUT_DIR python docs/perf/h100-2026-11-25-sparse-accept-ab.py SMOLLM2_DIR

It loads the old generate.py from git; the device machine has no git history, so there the same file was
imported from a copy.
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
from selfspec.checkpoint import load_tokenizer, model_from_state_dict, open_checkpoint  # noqa: E402
from selfspec.cuda_graphs import graph_models  # noqa: E402
from selfspec.quantize import make_draft  # noqa: E402


def generate_module_at(commit: str):
    """selfspec/generate.py as it was at `commit`, imported as a module of its own."""
    source = subprocess.run(["git", "-C", root, "show", f"{commit}:selfspec/generate.py"], capture_output=True,
                            text=True, check=True).stdout
    path = os.path.join(tempfile.mkdtemp(), "old_generate.py")
    with open(path, "w") as f:
        f.write(source.replace("from . import InputError, topk_triton", "from selfspec import InputError, topk_triton"))
    spec = importlib.util.spec_from_file_location("old_generate", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


out = os.environ["OUT"]; proxy = sys.argv[1]
res = {}
old_generate = generate_module_at("cd1a6f7")
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
    json.dump(res, open(out + "/accept_ab.json", "w"), indent=1)
