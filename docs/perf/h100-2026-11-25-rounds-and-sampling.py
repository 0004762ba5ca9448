"""Where a speculative round's time goes, and sampling on the SmolLM2 proxy (H100; ran on commit 48add4d).

For each of the nine chat prompts of scripts/measure_acceptance.py, embedded into the 7B shape
(scripts/make_proxy.py), 128 new tokens: plain and self-speculative generate() in three modes (greedy;
the hub's sampling settings: temperature 0.3, top-k 5, top-p 0.85; temperature 0.7 with top-p 0.9),
seeded, with CUDA events around every call of the graphed target and draft ("busy": graph replays and
their input copies), so that decode time minus busy time is what the host and the eager work between
calls cost. First, the GPU and wall time of Sampling.probs over [1 or 9, 125,696] logits.

    python docs/perf/h100-2026-11-25-rounds-and-sampling.py SMOLLM2_DIR OUT_DIR
"""
import json
import os
import sys
import time
from pathlib import Path

root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path[:0] = [root, os.path.join(root, "scripts")]
import torch  # noqa: E402
from make_proxy import BAICHUAN2_7B_SHAPE, embed_llama, read_llama  # noqa: E402
from measure_acceptance import PROMPTS  # noqa: E402
from selfspec.checkpoint import load_tokenizer, model_from_state_dict, open_checkpoint  # noqa: E402
from selfspec.cuda_graphs import graph_models  # noqa: E402
from selfspec.generate import Sampling, generate  # noqa: E402
from selfspec.quantize import make_draft  # noqa: E402

proxy, out = sys.argv[1], Path(sys.argv[2])
res = {}

class Timed:
    def __init__(self, inner):
        self.inner, self.module, self.events = inner, inner.module, []
    @property
    def max_seq_len(self):
        return self.inner.max_seq_len
    def __call__(self, tokens, *a, **k):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record(); y = self.inner(tokens, *a, **k); e.record()
        self.events.append((tokens.shape[1], s, e))
        return y
    def busy(self):
        torch.cuda.synchronize()
        r = {}
        for n, s, e in self.events:
            key = "1" if n == 1 else ("prefill" if n > 16 else "multi")
            r.setdefault(key, [0, 0.0]); r[key][0] += 1; r[key][1] += s.elapsed_time(e)
        self.events = []
        return r

with torch.inference_mode():
    ckpt = open_checkpoint(proxy)
    tok = load_tokenizer(ckpt)
    state, config = read_llama(proxy, device="cuda")
    state, config = embed_llama(state, config, BAICHUAN2_7B_SHAPE, dtype=torch.float16)
    model = model_from_state_dict(config, state, torch.float16, "cuda", 1024 + 128 + 9)
    del state
    draft = make_draft(model)
    mg, dg = graph_models(model, draft)
    tm, td = Timed(mg), Timed(dg)
    # (3) Sampling.probs cost
    V = model.args.vocab_size
    for name, s in [("hub", Sampling(True, 0.3, 5, 0.85)), ("t1", Sampling(True, 1.0, 0, 1.0)), ("t07p09", Sampling(True, 0.7, 0, 0.9))]:
        for rows in (1, 9):
            x = torch.randn(rows, V, device="cuda", dtype=torch.float16) * 3
            for _ in range(3): s.probs(x)
            torch.cuda.synchronize(); t = time.perf_counter()
            for _ in range(50): s.probs(x)
            torch.cuda.synchronize(); wall = (time.perf_counter() - t) / 50 * 1e3
            st, en = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            st.record()
            for _ in range(50): s.probs(x)
            en.record(); torch.cuda.synchronize()
            res[f"probs_{name}_{rows}_ms"] = {"wall": wall, "gpu": st.elapsed_time(en) / 50}
    print({k: {a: round(b, 3) for a, b in v.items()} for k, v in res.items()}, flush=True)
    opts = dict(max_step_draft=8, eos_token_id=ckpt.eos_token_id)
    rows = []
    for prompt in PROMPTS:
        ids, _ = ckpt.chat_ids(tok, prompt, max_input_tokens=1024)
        row = {"prompt_tokens": len(ids)}
        for mode, sopts in [("greedy", {}), ("hub", dict(do_sample=True, temperature=0.3, top_k=5, top_p=0.85)),
                            ("t07p09", dict(do_sample=True, temperature=0.7, top_p=0.9))]:
            for name, d in (("plain", None), ("spec", td)):
                g = lambda: torch.Generator(device="cuda").manual_seed(0)
                generate(tm, ids, 128, draft=d, generator=g(), **sopts, **opts)
                tm.busy(); td.busy()
                o, st = generate(tm, ids, 128, draft=d, generator=g(), **sopts, **opts)
                decode = st.e2e_time_s - st.first_token_latency_s
                row[f"{mode}_{name}"] = {"tokens": st.tokens_generated, "decode_s": decode, "drafted": st.drafted,
                                         "accepted": st.accepted, "rounds": st.verify_steps,
                                         "target_busy": tm.busy(), "draft_busy": td.busy(), "ids": o}
        rows.append(row)
        print(json.dumps({k: ({a: b for a, b in v.items() if a != "ids"} if isinstance(v, dict) else v) for k, v in row.items()}), flush=True)
    res["rows"] = rows
    for mode in ("greedy", "hub", "t07p09"):
        s = {}
        for name in ("plain", "spec"):
            tokens = sum(r[f"{mode}_{name}"]["tokens"] - 1 for r in rows)
            dec = sum(r[f"{mode}_{name}"]["decode_s"] for r in rows)
            s[name + "_tok_s"] = tokens / dec
        dr = sum(r[f"{mode}_spec"]["drafted"] for r in rows); ac = sum(r[f"{mode}_spec"]["accepted"] for r in rows)
        s["acceptance"] = ac / dr; s["speedup"] = s["spec_tok_s"] / s["plain_tok_s"]
        res[f"summary_{mode}"] = s
        print(mode, s, flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rounds.json").write_text(json.dumps(res, indent=1))
