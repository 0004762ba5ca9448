"""Greedy and hub-setting sampling, each without and with a repetition penalty of 1.05 (Baichuan2-Chat's
generation_config), plain against self-speculative decoding, on an H100: the SmolLM2 proxy in the 7B shape
(scripts/make_proxy.py), the nine chat prompts of scripts/measure_acceptance.py, 128 new tokens, a seeded
generator per prompt, two rounds after a warm-up. One process, the code of the commit it was run at.

    OUT=OUT_DIR python docs/perf/h100-2026-11-25-sampling-and-penalty.py SMOLLM2_DIR
"""
import json
import os
import sys

root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path[:0] = [root, os.path.join(root, "scripts")]
import torch  # noqa: E402
from make_proxy import BAICHUAN2_7B_SHAPE, embed_llama, read_llama  # noqa: E402
from measure_acceptance import PROMPTS  # noqa: E402
from selfspec.checkpoint import load_tokenizer, model_from_state_dict, open_checkpoint  # noqa: E402
from selfspec.cuda_graphs import graph_models  # noqa: E402
from selfspec.generate import generate  # noqa: E402
from selfspec.quantize import make_draft  # noqa: E402

out = os.environ["OUT"]; proxy = sys.argv[1]
hub = dict(do_sample=True, temperature=0.3, top_k=5, top_p=0.85)
modes = {"greedy": {}, "greedy_penalty": dict(repetition_penalty=1.05),
         "hub": hub, "hub_penalty": dict(hub, repetition_penalty=1.05)}
res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "modes": modes, "rounds": {}}
with torch.inference_mode():
    ckpt = open_checkpoint(proxy); tok = load_tokenizer(ckpt)
    state, config = read_llama(proxy, device="cuda")
    state, config = embed_llama(state, config, BAICHUAN2_7B_SHAPE, dtype=torch.float16)
    model = model_from_state_dict(config, state, torch.float16, "cuda", 1024 + 128 + 9)
    del state
    mg, dg = graph_models(model, make_draft(model))
    opts = dict(max_step_draft=8, eos_token_id=ckpt.eos_token_id)
    prompts = [ckpt.chat_ids(tok, p, max_input_tokens=1024)[0] for p in PROMPTS]
    for ids in prompts:  # warm-up: graph captures, autotuning
        for m in modes.values():
            generate(mg, ids, 128, draft=dg, **m, **opts); generate(mg, ids, 128, **m, **opts)
    for rnd in range(2):
        for mode, mopts in modes.items():
            tot = {"plain": [0, 0.0], "spec": [0, 0.0]}; drafted = accepted = 0; outs = []
            for i, ids in enumerate(prompts):
                for kind, d in (("plain", None), ("spec", dg)):
                    gen = torch.Generator(device="cuda").manual_seed(i)
                    o, st = generate(mg, ids, 128, draft=d, generator=gen, **mopts, **opts)
                    tot[kind][0] += st.tokens_generated - 1; tot[kind][1] += st.e2e_time_s - st.first_token_latency_s
                    drafted += st.drafted; accepted += st.accepted; outs.append(o)
            r = {f"{k}_tokens_per_s": v[0] / v[1] for k, v in tot.items()}
            r["speedup"] = r["spec_tokens_per_s"] / r["plain_tokens_per_s"]; r["acceptance"] = accepted / drafted
            if "do_sample" not in mopts:
                r["spec_equals_plain"] = outs[0::2] == outs[1::2]
            res["rounds"].setdefault(mode, []).append(r)
            print(rnd, mode, r, flush=True)
json.dump(res, open(os.path.join(out, "sampling_and_penalty.json"), "w"), indent=1)
