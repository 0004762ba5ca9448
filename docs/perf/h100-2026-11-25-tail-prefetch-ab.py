"""A/B of the draft step on an H100, a record of an idea that was not kept (docs/performance.md).

    python docs/perf/h100-2026-11-25-tail-prefetch-ab.py 7b|13b     (from the repository root; writes $OUT)

Each INT4 GEMV of the draft asks L2 (`prefetch.global.L2::evict_last`, one per 128-byte line) for the first
2-8 MB of the *next* GEMV's weights (W_pack -> o_proj -> gate_up -> down -> next layer's W_pack), so that
the next kernel's ramp would find them in L2: at the program's start or after its loop, from all programs or
only the last ones launched. A copy of the f16x2 kernel with the production kernel's tuned configurations;
"orig" is the production kernel, "noPF" the copy without prefetching."""
import json, os, sys
sys.path.insert(0, "."); sys.path.insert(0, "scripts")
import torch, triton, triton.language as tl
from benchmark import random_model, step_costs
from selfspec import int4_triton, launch
from selfspec.int4_triton import _HALF2_DOT
from selfspec.launch import let_next_kernel_launch, wait_for_inputs
from selfspec.cuda_graphs import graph_models
from selfspec.generate import generate
from selfspec.quantize import make_draft
torch.set_grad_enabled(False)

PF_ASM = tl.constexpr("{ prefetch.global.L2::evict_last [$1]; mov.u32 $0, 0; }")


@triton.jit
def _pf_kernel(x_ptr, w_ptr, s_ptr, y_ptr, N, K, stride_xm, stride_ym, pf_ptr, pf_lines, pf_from_pct,
               ASM: tl.constexpr, GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr, GLU: tl.constexpr,
               PDL: tl.constexpr, PF: tl.constexpr, PF_AFTER: tl.constexpr, EVICT_FIRST: tl.constexpr, PF_BLOCK: tl.constexpr):
    WORDS: tl.constexpr = GROUP // 8
    m = tl.program_id(1)
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    n_groups = K // GROUP
    g = tl.arange(0, BLOCK_G)
    i = tl.arange(0, WORDS)
    tile: tl.constexpr = (BLOCK_N, BLOCK_G, WORDS)
    wait_for_inputs(PDL)
    n_prog = tl.num_programs(0)
    first = (n_prog * pf_from_pct) // 100
    if PF and not PF_AFTER:
        if (pid >= first) & (m == 0):
            per = tl.cdiv(pf_lines, n_prog - first)
            start = (pid - first) * per
            for c in range(0, per, PF_BLOCK):
                line = tl.minimum(start + c + tl.arange(0, PF_BLOCK), pf_lines - 1)
                tl.inline_asm_elementwise(PF_ASM, "=r,l", [pf_ptr + line * 32], dtype=tl.int32, is_pure=False, pack=1)
    acc = tl.zeros((BLOCK_N, BLOCK_G), dtype=tl.float32)
    for g0 in range(0, n_groups, BLOCK_G):
        groups = g0 + g
        g_ok = groups < n_groups
        ok = row_ok[:, None] & g_ok[None, :]
        if EVICT_FIRST:
            words = tl.load(w_ptr + rows[:, None, None] * (K // 8) + groups[None, :, None] * WORDS + i[None, None, :],
                            mask=ok[:, :, None], other=0, eviction_policy="evict_first")
        else:
            words = tl.load(w_ptr + rows[:, None, None] * (K // 8) + groups[None, :, None] * WORDS + i[None, None, :],
                            mask=ok[:, :, None], other=0)
        pairs = x_ptr + m * stride_xm + (groups[:, None] * WORDS + i[None, :]) * 4
        x0 = tl.broadcast_to(tl.load(pairs, mask=g_ok[:, None], other=0)[None, :, :], tile)
        x1 = tl.broadcast_to(tl.load(pairs + 1, mask=g_ok[:, None], other=0)[None, :, :], tile)
        x2 = tl.broadcast_to(tl.load(pairs + 2, mask=g_ok[:, None], other=0)[None, :, :], tile)
        x3 = tl.broadcast_to(tl.load(pairs + 3, mask=g_ok[:, None], other=0)[None, :, :], tile)
        dots = tl.inline_asm_elementwise(ASM, "=r,r,r,r,r,r", [words, x0, x1, x2, x3], dtype=tl.float32,
                                         is_pure=True, pack=1)
        scale = tl.load(s_ptr + rows[:, None] * n_groups + groups[None, :], mask=ok, other=0.0).to(tl.float32)
        acc += tl.sum(dots, axis=2) * scale
    let_next_kernel_launch(PDL)
    if PF and PF_AFTER:
        if (pid >= first) & (m == 0):
            per = tl.cdiv(pf_lines, n_prog - first)
            start = (pid - first) * per
            for c in range(0, per, PF_BLOCK):
                line = tl.minimum(start + c + tl.arange(0, PF_BLOCK), pf_lines - 1)
                tl.inline_asm_elementwise(PF_ASM, "=r,l", [pf_ptr + line * 32], dtype=tl.int32, is_pure=False, pack=1)
    y = tl.sum(acc, axis=1) * 16.0
    if GLU:
        gate, up = tl.split(tl.reshape(y, (BLOCK_N // 2, 2)))
        out_rows = pid * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)
        out = gate / (1.0 + tl.exp(-gate)) * up
        tl.store(y_ptr + m * stride_ym + out_rows, out.to(y_ptr.dtype.element_ty), mask=out_rows < N // 2)
    else:
        tl.store(y_ptr + m * stride_ym + rows, y.to(y_ptr.dtype.element_ty), mask=row_ok)


TUNED = {}
PLAN = {}  # words.data_ptr() -> (next words tensor, lines to prefetch)
CFG = dict(PF=False, PF_AFTER=False, EVICT_FIRST=False, pct=0, cap_mb=4)
orig_half2 = int4_triton.int4_matmul_half2


def patched_half2(x, words, scales, group_size, glu=False):
    n, k = words.shape[0], words.shape[1] * 8
    n_out = n // 2 if glu else n
    pairs = x.reshape(-1, k).contiguous().view(torch.int32)
    y = torch.empty(pairs.shape[0], n_out, dtype=x.dtype, device=x.device)
    nxt = PLAN.get(words.data_ptr())
    pf = CFG["PF"] and nxt is not None
    pf_words = nxt if pf else words
    lines = min(pf_words.numel() * 4, int(CFG["cap_mb"] * 2**20)) // 128 if pf else 1
    cfg = TUNED[(n, k, glu)]  # the configuration the production kernel's autotuner chose
    grid = (triton.cdiv(n, cfg.kwargs["BLOCK_N"]), pairs.shape[0])
    _pf_kernel[grid](pairs, words, scales, y, n, k, pairs.stride(0), y.stride(0), pf_words, lines, CFG["pct"],
                    ASM=_HALF2_DOT, GROUP=group_size, GLU=glu, PDL=launch.enabled, PF=pf, PF_AFTER=CFG["PF_AFTER"],
                    EVICT_FIRST=CFG["EVICT_FIRST"], PF_BLOCK=128, launch_pdl=launch.enabled, num_warps=cfg.num_warps,
                     num_stages=cfg.num_stages, **cfg.kwargs)
    return y.view(*x.shape[:-1], n_out)


shape = sys.argv[1] if len(sys.argv) > 1 else "7b"
model = random_model(shape, 1024 + 128 + 9 + 64)
draft = make_draft(model)
chain = []
for layer in draft.model.layers:
    chain += [layer.self_attn.W_pack, layer.self_attn.o_proj, layer.mlp.gate_up_proj, layer.mlp.down_proj]
for a, b in zip(chain, chain[1:]):
    PLAN[a.packed.data_ptr()] = b.packed
prompt = torch.randint(3, 125696, (1024,), generator=torch.Generator().manual_seed(1)).tolist()
x = torch.randn(1, 1, model.model.norm.weight.shape[0], device="cuda", dtype=torch.float16)

variants = {"orig": None, "noPF": dict(PF=False)}
for after, pct, cap in [(0, 0, 2), (0, 0, 8), (0, 50, 4), (1, 0, 4), (1, 50, 4), (1, 80, 8)]:
    variants[f"pf_after{after}_from{pct}_{cap}MB"] = dict(PF=True, PF_AFTER=bool(after), pct=pct, cap_mb=cap)
variants["pf_after0_from0_4MB_evictfirst"] = dict(PF=True, PF_AFTER=False, pct=0, cap_mb=4, EVICT_FIRST=True)
variants["evictfirst_only"] = dict(PF=False, EVICT_FIRST=True)
rows, ref = [], {}
out_dir = os.environ.get("OUT", ".")
for rnd in range(2):
    for name, cfg in variants.items():
        CFG.update(PF=False, PF_AFTER=False, EVICT_FIRST=False, pct=0, cap_mb=4)
        if cfg is None:
            int4_triton.int4_matmul_half2 = orig_half2
        else:
            int4_triton.int4_matmul_half2 = patched_half2
            CFG.update(cfg)
        try:
            model_g, draft_g = graph_models(model, draft)
            c = step_costs(model_g, draft_g, 1088, 8)
            r = {"variant": name, "round": rnd, "plain_ms": c["plain_step_ms"], "draft_ms": c["draft_step_ms"],
                 "draft_over_plain": c["draft_step_ms"] / c["plain_step_ms"]}
            if rnd == 0:
                o1, _ = generate(model_g, prompt, 32)
                o2, s2 = generate(model_g, prompt, 32, draft=draft_g)
                r.update(spec_equals_plain=o1 == o2, same_spec_as_orig=o2 == ref.setdefault("spec", o2),
                         acceptance=s2.acceptance_rate)
            del model_g, draft_g
        except Exception as e:  # keep going: one broken variant must not lose the others
            r = {"variant": name, "round": rnd, "error": repr(e)[:400]}
        if name == "orig" and not TUNED:
            for key, conf in int4_triton._int4_half2_gemv_tuned.cache.items():
                TUNED[(key[0], key[1], bool(key[2]))] = conf
            print("tuned", {str(k): str(v) for k, v in TUNED.items()}, flush=True)
        print(json.dumps(r), flush=True)
        rows.append(r)
        torch.cuda.synchronize()
        json.dump(rows, open(os.path.join(out_dir, f"tail_prefetch_{shape}.json"), "w"), indent=1)
