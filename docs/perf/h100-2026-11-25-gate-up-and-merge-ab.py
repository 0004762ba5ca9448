"""Two changes to the FP16 step, A/B in one process (random weights, graphs re-captured per variant, three
rounds), on the code before gate and up became one matrix (commit bcb5605):
  mlp:  the FP16 model's gate and up as one [2I, h] matmul instead of two (kept: model.MLP.gate_up_proj);
  attn: the decode attention's blocks merged by the last block program of each head to finish (an atomic
        counter per head), instead of a second kernel (not kept).
First checks that the merged kernel gives exactly the two kernels' output. JSON lines on stdout:

    python docs/perf/h100-2026-11-25-gate-up-and-merge-ab.py 7b   # or 13b
"""
import json
import os
import sys

root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path[:0] = [root, os.path.join(root, "scripts")]
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from benchmark import copy_bandwidth_gbs, cuda_ms, random_model, step_costs  # noqa: E402
from selfspec import attention_triton, launch  # noqa: E402
from selfspec import model as model_mod  # noqa: E402
from selfspec.attention_triton import BLOCK_KV, MAX_TOKENS  # noqa: E402
from selfspec.cuda_graphs import graph_models  # noqa: E402
from selfspec.launch import let_next_kernel_launch, wait_for_inputs  # noqa: E402
from selfspec.quantize import make_draft  # noqa: E402

torch.set_grad_enabled(False)
shape = sys.argv[1] if len(sys.argv) > 1 else "7b"


@triton.jit
def _attention_merged_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, pos_ptr, slopes_ptr, o_ptr, m_ptr, l_ptr, y_ptr, count_ptr,
    T, max_seq_len, num_blocks, sm_scale,
    HEADS: tl.constexpr, KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_T: tl.constexpr,
    BLOCK_KV: tl.constexpr, BLOCK_B: tl.constexpr, ALIBI: tl.constexpr, IEEE: tl.constexpr, PDL: tl.constexpr,
):
    let_next_kernel_launch(PDL)
    wait_for_inputs(PDL)
    h = tl.program_id(0)
    block = tl.program_id(1)
    live_len = tl.load(pos_ptr + T - 1) + 1
    live_blocks = (live_len + BLOCK_KV - 1) // BLOCK_KV
    if block < live_blocks:
        t = tl.arange(0, BLOCK_T)
        t_ok = t < T
        d = tl.arange(0, HEAD_DIM)
        j = block * BLOCK_KV + tl.arange(0, BLOCK_KV)
        q_pos = tl.load(pos_ptr + t, mask=t_ok, other=-1)
        q = tl.load(q_ptr + (t[:, None] * HEADS + h) * HEAD_DIM + d[None, :], mask=t_ok[:, None], other=0.0)
        kv_base = (h // (HEADS // KV_HEADS)) * max_seq_len * HEAD_DIM
        kv_offsets = kv_base + j[:, None] * HEAD_DIM + d[None, :]
        j_ok = j < live_len
        k = tl.load(k_cache_ptr + kv_offsets, mask=j_ok[:, None], other=0.0)
        v = tl.load(v_cache_ptr + kv_offsets, mask=j_ok[:, None], other=0.0)
        if IEEE:
            scores = tl.dot(q, tl.trans(k), input_precision="ieee") * sm_scale
        else:
            scores = tl.dot(q, tl.trans(k)) * sm_scale
        offset = (j[None, :] - q_pos[:, None]).to(tl.float32)
        if ALIBI:
            scores += tl.load(slopes_ptr + h) * offset
        scores = tl.where(offset <= 0, scores, float("-inf"))
        m = tl.max(scores, axis=1)
        m_safe = tl.where(m == float("-inf"), 0.0, m)
        p = tl.exp(scores - m_safe[:, None])
        if IEEE:
            acc = tl.dot(p.to(v.dtype), v, input_precision="ieee")
        else:
            acc = tl.dot(p.to(v.dtype), v)
        part = (h * num_blocks + block) * T + t
        tl.store(o_ptr + part[:, None] * HEAD_DIM + d[None, :], acc, mask=t_ok[:, None])
        tl.store(m_ptr + part, m, mask=t_ok)
        tl.store(l_ptr + part, tl.sum(p, axis=1), mask=t_ok)
        tl.debug_barrier()
        done = tl.atomic_add(count_ptr + h, 1, sem="acq_rel")
        if done == live_blocks - 1:  # the last block program of this head merges
            tl.store(count_ptr + h, 0)
            for tt in range(T):
                running_max = tl.full((1,), float("-inf"), tl.float32)
                total = tl.zeros((1,), dtype=tl.float32)
                acc2 = tl.zeros((HEAD_DIM,), dtype=tl.float32)
                for b0 in range(0, live_blocks, BLOCK_B):
                    b = b0 + tl.arange(0, BLOCK_B)
                    ok = b < live_blocks
                    part2 = (h * num_blocks + b) * T + tt
                    mm = tl.load(m_ptr + part2, mask=ok, other=float("-inf"), cache_modifier=".cg")
                    new_max = tl.maximum(running_max, tl.max(mm, axis=0, keep_dims=True))
                    weight = tl.where(mm == float("-inf"), 0.0, tl.exp(mm - new_max))
                    rescale = tl.exp(running_max - new_max)
                    o = tl.load(o_ptr + part2[:, None] * HEAD_DIM + d[None, :], mask=ok[:, None], other=0.0,
                                cache_modifier=".cg")
                    acc2 = acc2 * rescale + tl.sum(weight[:, None] * o, axis=0)
                    total = total * rescale + tl.sum(
                        weight * tl.load(l_ptr + part2, mask=ok, other=0.0, cache_modifier=".cg"), axis=0, keep_dims=True)
                    running_max = new_max
                tl.store(y_ptr + (tt * HEADS + h) * HEAD_DIM + d, (acc2 / total).to(y_ptr.dtype.element_ty))


_counters = {}
original_decode_attention = attention_triton.decode_attention


def merged_decode_attention(q, k_cache, v_cache, input_pos, end, alibi_slopes=None):
    T, num_heads, head_dim = q.shape
    num_kv_heads, max_seq_len = k_cache.shape[1], k_cache.shape[2]
    num_blocks = triton.cdiv(end, BLOCK_KV)
    counts = _counters.get(q.device)
    if counts is None or counts.numel() < num_heads:
        counts = _counters[q.device] = torch.zeros(max(num_heads, 64), dtype=torch.int32, device=q.device)
    o = torch.empty(num_heads, num_blocks, T, head_dim, dtype=torch.float32, device=q.device)
    m = torch.empty(num_heads, num_blocks, T, dtype=torch.float32, device=q.device)
    l = torch.empty_like(m)  # noqa: E741
    y = torch.empty(T, num_heads * head_dim, dtype=q.dtype, device=q.device)
    _attention_merged_kernel[(num_heads, num_blocks)](
        q, k_cache, v_cache, input_pos, alibi_slopes if alibi_slopes is not None else m, o, m, l, y, counts,
        T, max_seq_len, num_blocks, head_dim ** -0.5,
        HEADS=num_heads, KV_HEADS=num_kv_heads, HEAD_DIM=head_dim, BLOCK_T=MAX_TOKENS, BLOCK_KV=BLOCK_KV, BLOCK_B=32,
        ALIBI=alibi_slopes is not None, IEEE=q.dtype == torch.float32, PDL=launch.enabled, launch_pdl=launch.enabled,
    )
    return y


# --- correctness of the merged kernel against the current two kernels (exact) ---
torch.manual_seed(0)
for dtype in (torch.float32, torch.float16):
    for H, KVH, S, T, start, alibi in [(32, 32, 4096, 1, 1100, False), (40, 40, 4096, 9, 3000, True),
                                       (8, 2, 2048, 5, 700, False), (32, 32, 4096, 16, 0, False)]:
        kc, vc = torch.randn(2, 1, KVH, S, 128, device="cuda", dtype=dtype)
        q = torch.randn(T, H, 128, device="cuda", dtype=dtype)
        pos = torch.arange(start, start + T, device="cuda")
        slopes = model_mod.alibi_slopes(H).cuda() if alibi else None
        end = min(S, start + T + 200)
        for pdl in (False, True):
            launch.enable(torch.device("cuda"), pdl)
            a = original_decode_attention(q, kc, vc, pos, end, slopes)
            for _ in range(3):
                b = merged_decode_attention(q, kc, vc, pos, end, slopes)
                assert torch.equal(a, b), (dtype, H, T, start, pdl, (a - b).abs().max())
print(json.dumps({"check": "merged attention == two kernels, exact, fp32+fp16, 4 cases x pdl"}), flush=True)

model = random_model(shape, 1024 + 128 + 9 + 64)
draft = make_draft(model)
mlps = [layer.mlp for layer in model.model.layers]
for mlp in mlps:
    mlp.gate_up = torch.cat((mlp.gate_proj.weight, mlp.up_proj.weight))
original_mlp_forward = model_mod.MLP.forward


def fused_mlp_forward(self, x):
    gate, up = F.linear(x, self.gate_up).chunk(2, dim=-1)
    return self.down_proj(model_mod.silu_mul(gate, up))


def set_variant(v):
    model_mod.MLP.forward = fused_mlp_forward if "mlp" in v else original_mlp_forward
    attention_triton.decode_attention = merged_decode_attention if "attn" in v else original_decode_attention


# logits of one step per variant
tok = torch.randint(0, 1000, (1, 1024), device="cuda")
pos = torch.arange(1024, device="cuda")
ref = None
for v in ("base", "mlp", "attn", "mlp+attn"):
    set_variant(v)
    model(tok, pos, 1024, last_only=True)
    step = model(tok[:, :9], torch.arange(1024, 1033, device="cuda"), 1033).float()
    if ref is None:
        ref = step
    print(json.dumps({"variant": v, "verify9_logits_max_abs_diff_vs_base": float((step - ref).abs().max()),
                      "argmax_equal": bool(torch.equal(step.argmax(-1), ref.argmax(-1)))}), flush=True)

bw = copy_bandwidth_gbs()
rows = []
for rnd in range(3):
    for v in ("base", "mlp", "attn", "mlp+attn"):
        set_variant(v)
        model_g, draft_g = graph_models(model, draft)
        c = step_costs(model_g, draft_g, 1088, 8)
        prefill = cuda_ms(lambda: model_g(tok, pos, 1024, last_only=True), iters=10)
        r = {"shape": shape, "round": rnd, "variant": v, "plain_ms": round(c["plain_step_ms"], 4),
             "draft_ms": round(c["draft_step_ms"], 4), "verify9_ms": round(c["verify_9_ms"], 4),
             "draft_over_plain": round(c["draft_step_ms"] / c["plain_step_ms"], 4),
             "prefill_1024_ms": round(prefill, 3), "copy_gbs": round(bw)}
        print(json.dumps(r), flush=True)
        rows.append(r)
        del model_g, draft_g
        torch.cuda.empty_cache()
